//! Every CPU forward path of the model against the recipe written out as plain loops over
//! f64 vectors in this file (no candle op, no kernel of the crate): the training forward, the
//! inference forward, cached decoding on both backends, and the ops the unfused path calls.
//! (The fused kernels are compared with candle's composite ops in `tests/fused.rs`.)

use candle_core::{DType, Device, Tensor, Var};
use card::config::ModelConfig;
use card::model::{
    ops, tensor_specs, Attention, Backend, Params, Session, Transformer, Visibility,
};
use rand::{Rng, SeedableRng};

mod common;
use common::{random_ids, small_cfg};
use std::collections::HashMap;

/// Random weights of every tensor of `cfg`, by name, at scales that keep activations O(1):
/// matrices N(0, 1/√cols), norm weights 1 + N(0, 0.3²) (so a norm that ignored its weight
/// would show), biases N(0, 0.3²).
fn random_weights(cfg: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let normal = rand_distr::StandardNormal;
    tensor_specs(cfg)
        .into_iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let (base, std) = match s.shape.as_slice() {
                [_, cols] => (0.0, 1.0 / (*cols as f64).sqrt()),
                _ if s.name.ends_with("bias") => (0.0, 0.3),
                _ => (1.0, 0.3),
            };
            let data: Vec<f32> = (0..n)
                .map(|_| (base + std * rng.sample::<f64, _>(normal)) as f32)
                .collect();
            let t = Tensor::from_vec(data, s.shape.as_slice(), &Device::Cpu).unwrap();
            (s.name, t)
        })
        .collect()
}

/// The model recipe written out with loops over f64 vectors, sharing no code with the crate
/// (no candle op, no fused kernel): embedding, per layer pre-norm RMSNorm, the q/k/v
/// projection (+ bias), RoPE on non-interleaved halves, scaled softmax attention over the
/// keys `visible(query, key)` allows (grouped-query heads read key/value head h / group),
/// the output projection and residual, pre-norm SwiGLU and residual; final RMSNorm, head.
/// Returns the logits [T][V] of one sequence.
fn reference_logits(
    cfg: &ModelConfig,
    w: &HashMap<String, Tensor>,
    ids: &[u32],
    visible: &dyn Fn(usize, usize) -> bool,
) -> Vec<Vec<f64>> {
    let get = |n: &str| -> Vec<f64> {
        let t = &w[n];
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.into_iter().map(f64::from).collect()
    };
    // out[r] = Σ_c m[r, c]·x[c] for m [rows, x.len()] row-major.
    let matvec = |m: &[f64], x: &[f64]| -> Vec<f64> {
        m.chunks(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    };
    let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + cfg.norm_eps).sqrt();
        x.iter().zip(g).map(|(v, g)| v * inv * g).collect()
    };
    let (d, t_len) = (cfg.d_model, ids.len());
    let (nq, nkv) = (cfg.n_heads, cfg.n_kv_heads.unwrap_or(cfg.n_heads));
    let hd = d / nq;
    let half = hd / 2;
    let rotate = |v: &mut [f64], pos: usize| {
        for i in 0..half {
            let angle = pos as f64 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64);
            let (a, b) = (v[i], v[i + half]);
            v[i] = a * angle.cos() - b * angle.sin();
            v[i + half] = b * angle.cos() + a * angle.sin();
        }
    };
    let embed = get("embed.weight");
    let mut x: Vec<Vec<f64>> = ids
        .iter()
        .map(|&id| embed[id as usize * d..(id as usize + 1) * d].to_vec())
        .collect();
    for l in 0..cfg.n_layers {
        let p = |n: &str| get(&format!("layers.{l}.{n}"));
        let (attn_norm, wqkv, wo) = (
            p("attn_norm.weight"),
            p("attn.wqkv.weight"),
            p("attn.wo.weight"),
        );
        // Per position: the queries of every head, then the keys, then the values.
        let mut q = vec![vec![0.0; nq * hd]; t_len];
        let mut k = vec![vec![0.0; nkv * hd]; t_len];
        let mut v = vec![vec![0.0; nkv * hd]; t_len];
        for i in 0..t_len {
            let mut qkv = matvec(&wqkv, &rms(&x[i], &attn_norm));
            if cfg.qkv_bias {
                for (a, b) in qkv.iter_mut().zip(p("attn.wqkv.bias")) {
                    *a += b;
                }
            }
            q[i].copy_from_slice(&qkv[..nq * hd]);
            k[i].copy_from_slice(&qkv[nq * hd..(nq + nkv) * hd]);
            v[i].copy_from_slice(&qkv[(nq + nkv) * hd..]);
            for h in 0..nq {
                rotate(&mut q[i][h * hd..(h + 1) * hd], i);
            }
            for h in 0..nkv {
                rotate(&mut k[i][h * hd..(h + 1) * hd], i);
            }
        }
        let scale = 1.0 / (hd as f64).sqrt();
        for i in 0..t_len {
            let mut heads = vec![0.0; nq * hd];
            for h in 0..nq {
                let g = h / (nq / nkv);
                let qh = &q[i][h * hd..(h + 1) * hd];
                let keys: Vec<usize> = (0..t_len).filter(|&j| visible(i, j)).collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let kh = &k[j][g * hd..(g + 1) * hd];
                        scale * qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (&j, e) in keys.iter().zip(&e) {
                    for c in 0..hd {
                        heads[h * hd + c] += e / z * v[j][g * hd + c];
                    }
                }
            }
            for (a, b) in x[i].iter_mut().zip(matvec(&wo, &heads)) {
                *a += b;
            }
        }
        let (ffn_norm, gate_up, down) = (
            p("ffn_norm.weight"),
            p("ffn.w_gate_up.weight"),
            p("ffn.w_down.weight"),
        );
        for xi in x.iter_mut() {
            let gu = matvec(&gate_up, &rms(xi, &ffn_norm));
            let f = gu.len() / 2;
            let act: Vec<f64> = (0..f)
                .map(|c| gu[c] / (1.0 + (-gu[c]).exp()) * gu[f + c])
                .collect();
            for (a, b) in xi.iter_mut().zip(matvec(&down, &act)) {
                *a += b;
            }
        }
    }
    let norm = get("norm.weight");
    let head = if cfg.tie_embeddings {
        embed
    } else {
        get("head.weight")
    };
    x.iter().map(|xi| matvec(&head, &rms(xi, &norm))).collect()
}

/// Which keys query i may see: visible(i, j).
type Visible<'a> = &'a dyn Fn(usize, usize) -> bool;

/// Largest |a − b| between a model's f32 logits [B, T, V] and the reference's, per row.
fn diff_to_reference(got: &Tensor, want: &[Vec<Vec<f64>>]) -> f64 {
    let got = got.to_dtype(DType::F64).unwrap().to_vec3::<f64>().unwrap();
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(want) {
        for (g, w) in g.iter().zip(w) {
            for (a, b) in g.iter().zip(w) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

/// Every CPU path of the model against the plain reference: the training forward (`Var`s:
/// the fused kernels with their backward), the inference forward (plain tensors: fused
/// inference kernels, matmul or the small-row kernel), and cached decoding on both
/// backends (host slices; candle with a `KvCache`, whose unfused attention runs the
/// softmax with a causal offset) — under causal, full and explicit-mask attention, for
/// multi-head and for grouped-query attention with a q/k/v bias and an untied head.
#[test]
fn fused_inference_and_training_paths_match_a_plain_reference() {
    let gqa = ModelConfig {
        n_heads: 4,
        n_kv_heads: Some(2),
        qkv_bias: true,
        tie_embeddings: false,
        ..small_cfg(50)
    };
    for (what, cfg) in [("mha", small_cfg(50)), ("gqa", gqa)] {
        let weights = random_weights(&cfg, 11);
        let params = Params::from_map(&cfg, &weights).unwrap();
        let tracked = Transformer::from_params(&cfg, &params).unwrap();
        let plain = Transformer::from_tensors(&cfg, |n| Ok(weights[n].clone())).unwrap();
        let (b, t) = (2, 12);
        let seqs: Vec<Vec<u32>> = (0..b).map(|r| random_ids(t, 50, 12 + r as u64)).collect();
        let ids = Tensor::from_vec(seqs.concat(), (b, t), &Device::Cpu).unwrap();
        let odd = |i: usize, j: usize| (i + j) % 3 != 1 || i == j;
        let flags: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if odd(i, j) { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let bias = Tensor::from_vec(flags, (t, t), &Device::Cpu).unwrap();
        let causal = |i: usize, j: usize| j <= i;
        let full = |_: usize, _: usize| true;
        let cases: [(&str, Attention, Visible); 3] = [
            ("causal", Attention::Causal, &causal),
            ("full", Attention::Bidirectional, &full),
            ("mask", Attention::Mask(&bias), &odd),
        ];
        let (mut refs, mut scales) = (Vec::new(), Vec::new());
        for (name, attn, visible) in cases {
            let want: Vec<_> = seqs
                .iter()
                .map(|s| reference_logits(&cfg, &weights, s, visible))
                .collect();
            let scale = want
                .iter()
                .flatten()
                .flatten()
                .fold(0f64, |m, x| m.max(x.abs()));
            assert!(scale > 1.0, "{what}: logits too small to compare ({scale})");
            for (path, model) in [("training", &tracked), ("inference", &plain)] {
                let got = model.forward(&ids, attn, None).unwrap();
                let err = diff_to_reference(&got, &want);
                assert!(err < 1e-4 * scale, "{what} {name} {path}: off by {err}");
            }
            refs.push(want);
            scales.push(scale);
        }
        // The visibility matters: a path that ignored it could not pass all three.
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            let gap = refs[i]
                .iter()
                .flatten()
                .flatten()
                .zip(refs[j].iter().flatten().flatten())
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(gap > 0.1, "{what}: cases {i} and {j} differ by only {gap}");
        }
        // Cached decoding: a 5-token prefix, then the rest, against the causal reference.
        for backend in [Backend::Host, Backend::Candle] {
            let mut s = Session::new(&plain, backend, b, t, 0, 0).unwrap();
            for (from, to) in [(0, 5), (5, t)] {
                let chunk: Vec<Vec<u32>> = seqs.iter().map(|q| q[from..to].to_vec()).collect();
                s.forward(&chunk).unwrap();
                for (r, want) in refs[0].iter().enumerate() {
                    for (i, want) in want.iter().enumerate().take(to).skip(from) {
                        let err = s
                            .logits(r, i - from)
                            .iter()
                            .zip(want)
                            .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
                        assert!(
                            err < 1e-4 * scales[0],
                            "{what} {backend:?} row {r} position {i}: {err}"
                        );
                    }
                }
            }
        }
    }
}

/// The ops the unfused and cached paths call directly, on random input, against loops:
/// softmax over the last dimension, RMSNorm with its weight, and the attention softmax under
/// a causal offset (query i sees keys 0..=offset+i) and under an additive bias.
#[test]
fn softmax_norm_and_attention_softmax_ops_match_plain_loops() {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(21);
    let (rows, n) = (6, 9);
    let x: Vec<f32> = (0..rows * n).map(|_| rng.random_range(-3.0..3.0)).collect();
    let g: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..1.5)).collect();
    let xt = Tensor::from_vec(x.clone(), (1, rows, n), &Device::Cpu).unwrap();
    let gt = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap();
    let softmax = |row: &[f32], visible: &dyn Fn(usize) -> bool| -> Vec<f64> {
        let max = row
            .iter()
            .map(|&v| v as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row
            .iter()
            .enumerate()
            .map(|(j, &v)| {
                if visible(j) {
                    (v as f64 - max).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    };
    let check = |got: &Tensor, want: &dyn Fn(usize, usize) -> f64, what: &str| {
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for r in 0..rows {
            for j in 0..n {
                let (a, b) = (got[r * n + j] as f64, want(r, j));
                assert!((a - b).abs() < 1e-5, "{what} [{r}, {j}]: {a} vs {b}");
            }
        }
    };
    let var = Var::from_tensor(&xt).unwrap();
    for (kind, input) in [("plain", xt.clone()), ("tracked", var.as_tensor().clone())] {
        let row = |r: usize| &x[r * n..(r + 1) * n];
        let p = ops::softmax_last(&input).unwrap();
        check(
            &p,
            &|r, j| softmax(row(r), &|_| true)[j],
            &format!("{kind} softmax"),
        );
        let y = ops::rms_norm(&input, &gt, 1e-5).unwrap();
        check(
            &y,
            &|r, j| {
                let ms = row(r).iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
                row(r)[j] as f64 / (ms + 1e-5).sqrt() * g[j] as f64
            },
            &format!("{kind} rms_norm"),
        );
        // Scores [1, rows, n] as 6 queries after a cached prefix of 3 over 9 keys.
        let scaled: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
        let srow = |r: usize| &scaled[r * n..(r + 1) * n];
        let vis = Visibility::Causal { offset: 3 };
        let p = ops::attention_softmax(&input, 0.5, &vis).unwrap();
        check(
            &p,
            &|r, j| softmax(srow(r), &|k| k <= 3 + r)[j],
            &format!("{kind} causal softmax"),
        );
        let hidden = |r: usize, k: usize| (r + k) % 4 == 2;
        let b: Vec<f32> = (0..rows * n)
            .map(|i| {
                if hidden(i / n, i % n) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let bias = Tensor::from_vec(b, (rows, n), &Device::Cpu).unwrap();
        let p = ops::attention_softmax(&input, 0.5, &Visibility::Bias(bias)).unwrap();
        check(
            &p,
            &|r, j| softmax(srow(r), &|k| !hidden(r, k))[j],
            &format!("{kind} masked softmax"),
        );
    }
}
