//! The fused CPU kernels against the composite candle reference: forward values and
//! gradients in f32, finite-difference gradients in f64, edge cases (rows that are −∞ but for
//! one entry, zero loss weights, strided inputs) and bit-identical reruns.

use candle_core::{DType, Device, Result, Tensor, Var};
use card::model::ops::{self, composite};
use card::model::visibility::{causal_bias, Visibility};
use rand::{Rng, SeedableRng};

mod common;

type Op<'a> = dyn Fn(&[Tensor]) -> Result<Tensor> + 'a;

fn rng(seed: u64) -> rand_pcg::Pcg64 {
    rand_pcg::Pcg64::seed_from_u64(seed)
}

fn randn(n: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| (r.random::<f64>() * 2.0 - 1.0) * scale)
        .collect()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Scalar probe Σ r ⊙ op(inputs) with fixed random r, so every output element matters.
fn probe(op: &Op<'_>, xs: &[Tensor]) -> (Tensor, Tensor) {
    let y = op(xs).unwrap();
    let r = randn(y.elem_count(), 1.0, 99);
    let r = Tensor::from_vec(r, y.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(y.dtype())
        .unwrap();
    let l = (y.clone() * r).unwrap().sum_all().unwrap();
    (y, l)
}

fn vars(data: &[(Vec<f64>, Vec<usize>)], dtype: DType) -> Vec<Var> {
    data.iter()
        .map(|(v, s)| {
            let t = Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap();
            Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
        })
        .collect()
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let ok = (x == y) || (x - y).abs() <= tol * (1.0 + y.abs());
        assert!(ok, "{what}[{i}]: fused {x} reference {y}");
    }
}

/// f32: fused and reference agree in values and in the gradients of every input.
fn matches_reference(
    name: &str,
    data: &[(Vec<f64>, Vec<usize>)],
    fused: &Op<'_>,
    reference: &Op<'_>,
) {
    let xs = vars(data, DType::F32);
    let ts: Vec<Tensor> = xs.iter().map(|v| v.as_tensor().clone()).collect();
    let (yf, lf) = probe(fused, &ts);
    let (yr, lr) = probe(reference, &ts);
    assert_eq!(yf.dims(), yr.dims(), "{name}: shapes");
    close(&to_vec(&yf), &to_vec(&yr), 1e-5, &format!("{name} forward"));
    let (gf, gr) = (lf.backward().unwrap(), lr.backward().unwrap());
    for (i, x) in xs.iter().enumerate() {
        let a = gf.get(x.as_tensor()).map(to_vec);
        let b = gr.get(x.as_tensor()).map(to_vec);
        match (a, b) {
            (Some(a), Some(b)) => close(&a, &b, 1e-5, &format!("{name} grad {i}")),
            (a, b) => assert_eq!(a.is_some(), b.is_some(), "{name} grad {i} presence"),
        }
    }
}

/// f64: the fused backward equals central finite differences of the fused forward.
fn gradient_check(name: &str, data: &[(Vec<f64>, Vec<usize>)], fused: &Op<'_>) {
    let xs = vars(data, DType::F64);
    let ts: Vec<Tensor> = xs.iter().map(|v| v.as_tensor().clone()).collect();
    let (_, l0) = probe(fused, &ts);
    let grads = l0.backward().unwrap();
    // Rounding noise of a central difference: about |L| · 1e-16 / eps.
    let noise = 1e-9 * (1.0 + l0.to_scalar::<f64>().unwrap().abs());
    let mut r = rng(5);
    let eps = 1e-6;
    for (i, x) in xs.iter().enumerate() {
        let Some(g) = grads.get(x.as_tensor()).map(to_vec) else {
            continue;
        };
        let base = to_vec(x.as_tensor());
        for _ in 0..12 {
            let k = r.random_range(0..base.len());
            if !base[k].is_finite() {
                continue;
            }
            let at = |d: f64| {
                let mut p = base.clone();
                p[k] += d;
                x.set(&Tensor::from_vec(p, x.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let l = probe(fused, &ts).1.to_scalar::<f64>().unwrap();
                x.set(&Tensor::from_vec(base.clone(), x.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                l
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            let err = (numeric - g[k]).abs() / (numeric.abs() + g[k].abs()).max(1e-6);
            assert!(
                err < 1e-6 || (numeric - g[k]).abs() < noise,
                "{name} input {i}[{k}]: analytic {} numeric {numeric}",
                g[k]
            );
        }
    }
}

/// The reference comparison always; finite differences on the small cases only (on large
/// ones the probe's rounding error swamps the differences of tiny gradients).
fn check(name: &str, data: &[(Vec<f64>, Vec<usize>)], fused: &Op<'_>, reference: &Op<'_>) {
    matches_reference(name, data, fused, reference);
    if data.iter().map(|(v, _)| v.len()).sum::<usize>() <= 4096 {
        gradient_check(name, data, fused);
    }
}

fn targets(n: usize, v: usize, seed: u64) -> Tensor {
    let mut r = rng(seed);
    let t: Vec<u32> = (0..n).map(|_| r.random_range(0..v as u32)).collect();
    Tensor::from_vec(t, n, &Device::Cpu).unwrap()
}

fn cast(t: &Tensor, like: &Tensor) -> Tensor {
    t.to_dtype(like.dtype()).unwrap()
}

#[test]
fn weighted_nll_matches_and_has_exact_gradients() {
    for (n, v) in [(7, 13), (300, 500)] {
        let t = targets(n, v, 1);
        // Weights with zeros: those rows get no gradient.
        let w: Vec<f64> = (0..n).map(|i| [0.0, 0.5, 1.0, 2.0][i % 4]).collect();
        let w = Tensor::from_vec(w, n, &Device::Cpu).unwrap();
        let data = [(randn(n * v, 4.0, 2), vec![n, v])];
        let fused = |x: &[Tensor]| ops::weighted_nll(&x[0], &t, &cast(&w, &x[0]), 3.7);
        let reference = |x: &[Tensor]| composite::weighted_nll(&x[0], &t, &cast(&w, &x[0]), 3.7);
        check(&format!("weighted_nll {n}x{v}"), &data, &fused, &reference);
        let fused = |x: &[Tensor]| ops::token_nll(&x[0], &t);
        let reference = |x: &[Tensor]| composite::token_nll(&x[0], &t);
        check(&format!("token_nll {n}x{v}"), &data, &fused, &reference);
    }
}

#[test]
fn zero_weight_rows_get_exactly_zero_gradient() {
    let (n, v) = (4, 9);
    let x =
        Var::from_tensor(&Tensor::from_vec(randn(n * v, 3.0, 3), (n, v), &Device::Cpu).unwrap())
            .unwrap();
    let w = Tensor::from_vec(vec![0f64, 1.0, 0.0, 2.0], n, &Device::Cpu).unwrap();
    let l = ops::weighted_nll(x.as_tensor(), &targets(n, v, 4), &w, 1.0).unwrap();
    let g = l
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    assert!(g[0].iter().chain(&g[2]).all(|&e| e == 0.0));
    assert!(g[1].iter().any(|&e| e != 0.0));
    // Each supervised row's gradient sums to zero (softmax minus one-hot).
    assert!(g[3].iter().sum::<f64>().abs() < 1e-12);
}

#[test]
fn nll_rejects_out_of_range_targets() {
    let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::from_vec(vec![1u32, 5], 2, &Device::Cpu).unwrap();
    assert!(ops::token_nll(&x, &t).is_err());
}

/// Scores with one row that is −∞ everywhere but one entry.
fn scores_with_spike(shape: &[usize], seed: u64) -> Vec<f64> {
    let mut s = randn(shape.iter().product(), 3.0, seed);
    let tk = shape[shape.len() - 1];
    for (j, e) in s[tk..2 * tk].iter_mut().enumerate() {
        if j != 2 {
            *e = f64::NEG_INFINITY;
        }
    }
    s
}

#[test]
fn softmax_matches_and_has_exact_gradients() {
    for shape in [vec![3, 5, 9], vec![40, 64, 33]] {
        let data = [(scores_with_spike(&shape, 6), shape.clone())];
        check(
            &format!("softmax {shape:?}"),
            &data,
            &|x| ops::softmax_last(&x[0]),
            &|x| composite::softmax_last(&x[0]),
        );
    }
}

fn explicit_mask(tq: usize, tk: usize) -> Tensor {
    let m: Vec<f64> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                // Row 1 sees key 0 only; others a pattern.
                let visible = if i == 1 {
                    j == 0
                } else {
                    (i + j) % 3 != 1 || j == i
                };
                if visible {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(m, (tq, tk), &Device::Cpu).unwrap()
}

#[test]
fn attention_softmax_matches_for_every_mask() {
    // (b, h, tq, tk, causal offset): a cached prefix (tk > tq) and a large parallel case.
    for (b, h, tq, tk) in [(2, 2, 4, 7), (2, 2, 6, 6), (4, 4, 64, 64)] {
        let shape = vec![b, h, tq, tk];
        let data = [(randn(b * h * tq * tk, 4.0, 7), shape.clone())];
        let mask = explicit_mask(tq, tk);
        // The explicit mask on top of the causal one, as one bias.
        let causal = causal_bias(tq, tk - tq, DType::F64, &Device::Cpu).unwrap();
        let both = (cast(&mask, &causal) + causal).unwrap();
        for kind in ["causal", "full", "mask", "causal+mask"] {
            let vis_of = |x: &Tensor| match kind {
                "causal" => Visibility::Causal { offset: tk - tq },
                "full" => Visibility::Full,
                "mask" => Visibility::Bias(cast(&mask, x)),
                _ => Visibility::Bias(cast(&both, x)),
            };
            let fused = |x: &[Tensor]| ops::attention_softmax(&x[0], 0.3, &vis_of(&x[0]));
            let reference = |x: &[Tensor]| composite::attention_softmax(&x[0], 0.3, &vis_of(&x[0]));
            let name = format!("attention {shape:?} {kind}");
            check(&name, &data, &fused, &reference);
        }
    }
}

#[test]
fn rms_norm_matches_and_has_exact_gradients() {
    for (rows, d) in [(10, 16), (300, 256)] {
        let data = [
            (randn(rows * d, 2.0, 8), vec![rows / 2, 2, d]),
            (randn(d, 1.5, 9), vec![d]),
        ];
        check(
            &format!("rms_norm {rows}x{d}"),
            &data,
            &|x| ops::rms_norm(&x[0], &x[1], 1e-5),
            &|x| composite::rms_norm(&x[0], &x[1], 1e-5),
        );
    }
}

#[test]
fn swiglu_matches_and_has_exact_gradients() {
    for shape in [vec![3, 4, 10], vec![8, 30, 200]] {
        let data = [(randn(shape.iter().product(), 4.0, 10), shape.clone())];
        check(
            &format!("swiglu {shape:?}"),
            &data,
            &|x| ops::swiglu(&x[0]),
            &|x| composite::swiglu(&x[0]),
        );
    }
}

#[test]
fn rope_on_a_strided_view_matches_and_has_exact_gradients() {
    for (b, t, h, hd) in [(2, 6, 2, 8), (4, 64, 4, 32)] {
        let angles = randn(t * hd / 2, 3.0, 11);
        let cos: Vec<f64> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f64> = angles.iter().map(|a| a.sin()).collect();
        let cos = Tensor::from_vec(cos, (t, hd / 2), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(sin, (t, hd / 2), &Device::Cpu).unwrap();
        // x is the key slice of a fused [b, t, 3, h, hd] projection, viewed as [b, h, t, hd].
        let view = |x: &Tensor| {
            x.narrow(2, 1, 1)
                .unwrap()
                .squeeze(2)
                .unwrap()
                .transpose(1, 2)
        };
        let data = [(randn(b * t * 3 * h * hd, 2.0, 12), vec![b, t, 3, h, hd])];
        check(
            &format!("rope {b}x{t}x{h}x{hd}"),
            &data,
            &|x| ops::rope(&view(&x[0])?, &cast(&cos, &x[0]), &cast(&sin, &x[0])),
            &|x| composite::rope(&view(&x[0])?, &cast(&cos, &x[0]), &cast(&sin, &x[0])),
        );
    }
}

#[test]
fn fused_kernels_are_bit_identical_across_runs() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(
        &Tensor::from_vec(randn(512 * 300, 3.0, 13), (512, 300), &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    )
    .unwrap();
    let w = Var::from_tensor(&Tensor::ones(300, DType::F32, &dev).unwrap()).unwrap();
    let t = targets(512, 150, 14);
    let run = || {
        let h = ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let s = ops::swiglu(&h).unwrap();
        let p = ops::softmax_last(&s).unwrap();
        let wt = Tensor::ones(512, DType::F32, &dev).unwrap();
        let l = ops::weighted_nll(&p, &t, &wt, 512.0).unwrap();
        let g = l.backward().unwrap();
        let mut out = to_vec(&l);
        out.extend(to_vec(g.get(x.as_tensor()).unwrap()));
        out.extend(to_vec(g.get(w.as_tensor()).unwrap()));
        out.into_iter().map(f64::to_bits).collect::<Vec<_>>()
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "a rerun differs");
    }
}

#[test]
fn small_row_matmul_matches_candle() {
    use card::model::ops::linear;
    let dev = candle_core::Device::Cpu;
    // (m, k, n): few rows keep 8/4/3/2 chunks in flight per row; lengths leave every remainder.
    #[rustfmt::skip]
    let shapes = [(2, 64, 100), (5, 37, 33), (16, 130, 257), (1, 8, 8), (1, 100, 33),
        (1, 576, 40), (2, 72, 9), (3, 200, 17), (4, 577, 5), (7, 53, 9)];
    for (m, k, n) in shapes {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let got = linear(&x, &w).unwrap();
        let diff = common::max_abs_diff(&want, &got);
        assert!(diff < 1e-3, "m {m} k {k} n {n}: {diff}");
    }
    // Three leading dimensions flatten into the rows.
    let x = Tensor::randn(0f32, 1.0, (1, 3, 20), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (7, 20), &dev).unwrap();
    assert_eq!(linear(&x, &w).unwrap().dims(), &[1, 3, 7]);
}

/// The unfused path the attention kernel replaces: split qkv [B, T, 3d] into heads, rotate q
/// and k, scaled scores, masked softmax, value sum, heads concatenated.
fn attention_reference(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    causal: bool,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    let hd = d3 / 3 / heads;
    let x = qkv.reshape((b, t, 3, heads, hd))?;
    let part = |i: usize| x.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2);
    let q = composite::rope(&part(0)?, cos, sin)?.contiguous()?;
    let k = composite::rope(&part(1)?, cos, sin)?.contiguous()?;
    let v = part(2)?.contiguous()?;
    let scores = q.matmul(&k.t()?)?;
    let vis = match (causal, bias) {
        (true, _) => Visibility::Causal { offset: 0 },
        (false, Some(b)) => Visibility::Bias(b.clone()),
        (false, None) => Visibility::Full,
    };
    let p = composite::attention_softmax(&scores, 0.35, &vis)?;
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d3 / 3))
}

fn geometry(heads: usize, dim: usize) -> card::config::Heads {
    card::config::Heads {
        q: heads,
        kv: heads,
        dim,
    }
}

fn tables(t: usize, half: usize, seed: u64) -> (Tensor, Tensor) {
    // Arbitrary values, not true rotations: the backward must use the exact transpose.
    let cos = Tensor::from_vec(randn(t * half, 1.0, seed), (t, half), &Device::Cpu).unwrap();
    let sin = Tensor::from_vec(randn(t * half, 1.0, seed + 1), (t, half), &Device::Cpu).unwrap();
    (cos, sin)
}

#[test]
fn fused_attention_matches_the_unfused_path_for_every_mask() {
    // (batch, T, heads, head_dim): small enough for finite differences, one crossing the
    // 64-query block boundary with finite differences too, and larger multi-block cases.
    for (b, t, heads, hd) in [(2, 5, 2, 4), (1, 66, 1, 2), (2, 70, 2, 8), (1, 130, 4, 16)] {
        let data = [(
            randn(b * t * 3 * heads * hd, 1.5, 21),
            vec![b, t, 3 * heads * hd],
        )];
        let (cos, sin) = tables(t, hd / 2, 22);
        let mask = explicit_mask(t, t);
        for kind in ["causal", "full", "bias"] {
            let causal = kind == "causal";
            let bias = (kind == "bias").then_some(&mask);
            let fused = |x: &[Tensor]| {
                let vis = match bias {
                    Some(m) => Visibility::Bias(cast(m, &x[0])),
                    None if causal => Visibility::Causal { offset: 0 },
                    None => Visibility::Full,
                };
                let (c, s) = (cast(&cos, &x[0]), cast(&sin, &x[0]));
                Ok(
                    ops::attention(&x[0], &c, &s, geometry(heads, hd), 0.35, &vis)?
                        .expect("the fused kernel applies on CPU"),
                )
            };
            let reference = |x: &[Tensor]| {
                let (c, s) = (cast(&cos, &x[0]), cast(&sin, &x[0]));
                let bias = bias.map(|m| cast(m, &x[0]));
                attention_reference(&x[0], &c, &s, heads, causal, bias.as_ref())
            };
            check(
                &format!("fused attention b{b} t{t} h{heads} hd{hd} {kind}"),
                &data,
                &fused,
                &reference,
            );
        }
    }
}

#[test]
fn fused_attention_zeroes_fully_masked_queries_and_reruns_bit_identically() {
    let (b, t, heads, hd) = (2, 9, 2, 4);
    let dev = Device::Cpu;
    let qkv = Var::from_tensor(
        &Tensor::from_vec(
            randn(b * t * 3 * heads * hd, 2.0, 31),
            (b, t, 3 * heads * hd),
            &dev,
        )
        .unwrap(),
    )
    .unwrap();
    let (cos, sin) = tables(t, hd / 2, 32);
    // Query 3 sees nothing; the others see themselves and key 0.
    let m: Vec<f64> = (0..t * t)
        .map(|ij| {
            let (i, j) = (ij / t, ij % t);
            if i != 3 && (j == i || j == 0) {
                0.0
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let mask = Tensor::from_vec(m, (t, t), &dev).unwrap();
    let run = || {
        let vis = Visibility::Bias(mask.clone());
        let y = ops::attention(qkv.as_tensor(), &cos, &sin, geometry(heads, hd), 0.5, &vis)
            .unwrap()
            .unwrap();
        let g = (y.sqr().unwrap().sum_all().unwrap() + y.sum_all().unwrap())
            .unwrap()
            .backward()
            .unwrap();
        (to_vec(&y), to_vec(g.get(qkv.as_tensor()).unwrap()))
    };
    let (y, g) = run();
    let d = heads * hd;
    for row in 0..b {
        let at = (row * t + 3) * d;
        assert!(
            y[at..at + d].iter().all(|&v| v == 0.0),
            "masked query output"
        );
    }
    assert!(g.iter().all(|v| v.is_finite()), "gradients stay finite");
    assert!(g.iter().any(|&v| v != 0.0), "gradients flow");
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for _ in 0..3 {
        let (y2, g2) = run();
        assert!(
            bits(&y2) == bits(&y) && bits(&g2) == bits(&g),
            "a rerun differs"
        );
    }
}

#[test]
fn fused_linear_matches_matmul_and_has_exact_gradients() {
    for (lead, k, n) in [(vec![2, 3], 5, 4), (vec![70], 33, 17)] {
        let rows: usize = lead.iter().product();
        let mut xs = lead.clone();
        xs.push(k);
        let data = [
            (randn(rows * k, 1.0, 41), xs),
            (randn(n * k, 1.0, 42), vec![n, k]),
        ];
        check(
            &format!("linear {lead:?} x {k} -> {n}"),
            &data,
            &|x| ops::linear(&x[0], &x[1]),
            &|x| {
                let mut out = lead.clone();
                out.push(n);
                x[0].reshape((rows, k))?.matmul(&x[1].t()?)?.reshape(out)
            },
        );
    }
}

/// `train.compute = "bf16"`: the linear layer's values and both gradients agree with the f32
/// product to bf16 precision (operands rounded to 8 significant bits, sums in f32), on the path
/// this machine takes (AMX tiles, AVX512_BF16 dot products or the portable fallback).
#[test]
fn bf16_linear_matches_f32_to_bf16_precision() {
    use card::config::ComputeDtype;
    use card::kernels::bf16::Path;
    eprintln!("bf16 products on this CPU: {}", Path::best().name());
    let dev = Device::Cpu;
    for (lead, k, n) in [
        (vec![2, 3], 5, 4),
        (vec![70], 33, 17),
        (vec![4, 64], 96, 40),
    ] {
        let rows: usize = lead.iter().product();
        let mut xs = lead.clone();
        xs.push(k);
        let x = Var::from_vec(
            randn(rows * k, 1.0, 51).iter().map(|&v| v as f32).collect(),
            xs.as_slice(),
            &dev,
        )
        .unwrap();
        let w = Var::from_vec(
            randn(n * k, 1.0, 52).iter().map(|&v| v as f32).collect(),
            (n, k),
            &dev,
        )
        .unwrap();
        let mut ys = lead.clone();
        ys.push(n);
        let r = Tensor::from_vec(
            randn(rows * n, 1.0, 53).iter().map(|&v| v as f32).collect(),
            ys.as_slice(),
            &dev,
        )
        .unwrap();
        let run = |compute| {
            let y = ops::linear_in(x.as_tensor(), w.as_tensor(), compute).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = g.get(x.as_tensor()).unwrap().clone();
            let dw = g.get(w.as_tensor()).unwrap().clone();
            (y, dx, dw)
        };
        let (f, b) = (run(ComputeDtype::F32), run(ComputeDtype::Bf16));
        for (name, want, got) in [("y", &f.0, &b.0), ("dx", &f.1, &b.1), ("dw", &f.2, &b.2)] {
            assert_eq!(want.dims(), got.dims(), "{name}");
            let (want, got) = (to_vec(want), to_vec(got));
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let diff = want
                .iter()
                .zip(&got)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            // Each operand is off by at most 2^-9 relative; a sum of products stays well
            // inside 1% of the largest output.
            assert!(
                diff <= 1e-2 * scale,
                "{name} {lead:?}x{k}->{n}: {diff} of {scale}"
            );
            assert!(
                diff > 0.0,
                "{name}: bf16 and f32 agree exactly, so bf16 did not run"
            );
        }
    }
}
