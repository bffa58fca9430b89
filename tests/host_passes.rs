//! The host backend's passes over packed blocks: a pass of n positions gives the logits of n
//! single-position passes, on the exact path and on the int8 path (each row rounds alone),
//! and the int8 path stays within its rounding of the exact one.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use card::config::ModelConfig;
use card::model::host::HostPass;
use card::model::{Params, Transformer};
use common::{max_slice_diff, random_ids};

const VOCAB: usize = 96;

/// A random model whose matrices hold whole 32-value blocks.
fn model(seed: u64) -> Transformer {
    sized(seed, 64, 96)
}

/// A random model of width `d` and FFN width `ff`.
fn sized(seed: u64, d: usize, ff: usize) -> Transformer {
    let cfg = ModelConfig {
        vocab_size: VOCAB,
        d_model: d,
        n_layers: 2,
        n_heads: 2,
        d_ff: ff,
        max_seq_len: 64,
        ..ModelConfig::default()
    };
    let params = Params::init(&cfg, DType::F32, &Device::Cpu, seed).unwrap();
    let map = params.to_map().unwrap();
    Transformer::from_tensors(&cfg, |n| Ok(map[n].clone())).unwrap()
}

/// Logits of each of `tokens` after `prompt`: all in one pass, or one position a pass.
fn logits(model: &Transformer, prompt: &[u32], tokens: &[u32], one_pass: bool) -> Vec<Vec<f32>> {
    let mut pass = HostPass::new(model, 1, model.cfg.max_seq_len).expect("a host model");
    pass.forward(&[prompt.to_vec()]).unwrap();
    if one_pass {
        pass.forward(&[tokens.to_vec()]).unwrap();
        return (0..tokens.len())
            .map(|i| pass.logits(0, i).to_vec())
            .collect();
    }
    tokens
        .iter()
        .map(|&t| {
            pass.forward(&[vec![t]]).unwrap();
            pass.logits(0, 0).to_vec()
        })
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn a_pass_of_n_positions_gives_the_logits_of_n_single_passes() {
    let dense = model(3);
    let prompt = random_ids(20, VOCAB, 1);
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let exact = dense.to_blocks(dtype).unwrap();
        let int8 = exact.with_int8();
        assert!(
            int8.weights_label().ends_with(" int8"),
            "{}",
            int8.weights_label()
        );
        let (mut moved, mut same, mut total) = (0f32, 0, 0);
        // Up to the small-row kernel's 16 rows, and beyond (two chunks).
        for n in [2, 3, 5, 8, 16, 19] {
            let tokens = random_ids(n, VOCAB, n as u64);
            let want = logits(&exact, &prompt, &tokens, false);
            for (name, m) in [("exact", &exact), ("int8", &int8)] {
                let one = logits(m, &prompt, &tokens, true);
                let each = logits(m, &prompt, &tokens, false);
                for (i, (a, b)) in one.iter().zip(&each).enumerate() {
                    let scale = b.iter().fold(1f32, |s, v| s.max(v.abs()));
                    let d = max_slice_diff(a, b);
                    assert!(
                        d <= 1e-5 * scale,
                        "{dtype:?} {name} n {n} position {i}: {d}"
                    );
                }
            }
            // int8 against exact: the rounding moves the logits a little, not the picks.
            let got = logits(&int8, &prompt, &tokens, true);
            for (a, b) in got.iter().zip(&want) {
                let scale = b.iter().fold(1f32, |s, v| s.max(v.abs()));
                let d = max_slice_diff(a, b);
                assert!(d <= 0.05 * scale, "{dtype:?} int8 n {n}: {d} of {scale}");
                moved = moved.max(d);
                same += usize::from(argmax(a) == argmax(b));
                total += 1;
            }
        }
        assert!(
            moved > 0.0,
            "{dtype:?}: int8 gave the exact logits (no rounding?)"
        );
        assert!(
            same * 10 >= total * 9,
            "{dtype:?}: {same}/{total} argmax agree"
        );
    }
}

#[test]
fn int8_needs_quantized_blocks() {
    let dense = model(4);
    // An f32 model has no blocks to round for: with_int8 leaves its label and logits alone.
    let int8 = dense.with_int8();
    assert_eq!(int8.weights_label(), "f32");
    let prompt = random_ids(6, VOCAB, 9);
    let a = logits(&dense, &prompt, &[5, 6], true);
    let b = logits(&int8, &prompt, &[5, 6], true);
    assert_eq!(a, b);
}

#[test]
fn k_quant_models_decode_on_the_host_backend_like_their_expansion() {
    // Rows of whole 256-value super-blocks.
    let dense = sized(5, 256, 256);
    let prompt = random_ids(18, VOCAB, 2);
    let tokens = random_ids(5, VOCAB, 3);
    for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
        let packed = dense.to_blocks(dtype).unwrap();
        assert_eq!(
            card::model::Backend::for_model(&packed),
            card::model::Backend::Host,
            "{dtype:?} decodes on the host backend"
        );
        let reference = common::full_logits(&packed.dequantized().unwrap(), &{
            let mut all = prompt.clone();
            all.extend(&tokens);
            all
        });
        let one = logits(&packed, &prompt, &tokens, true);
        let each = logits(&packed, &prompt, &tokens, false);
        for (i, (a, b)) in one.iter().zip(&each).enumerate() {
            let want = &reference[prompt.len() + i];
            let scale = want.iter().fold(1f32, |s, v| s.max(v.abs()));
            assert!(
                max_slice_diff(a, want) <= 1e-4 * scale,
                "{dtype:?} position {i}"
            );
            assert!(
                max_slice_diff(a, b) <= 1e-5 * scale,
                "{dtype:?} position {i}"
            );
        }
        // The K-quants have no integer path: --int8 leaves them exact.
        assert_eq!(logits(&packed.with_int8(), &prompt, &tokens, true), one);
        // Either backend's cache holds what the call needs (30 positions and 4 of scratch,
        // for padding or a draft tree's alternatives), not the model's context of 64.
        use card::model::{Backend, Session};
        let host = Session::new(&packed, Backend::Host, 2, 30, 4, 0).unwrap();
        assert_eq!(host.capacity(), 34);
        let candle = Session::new(&packed, Backend::Candle, 2, 30, 4, 0).unwrap();
        assert_eq!(candle.capacity(), 34);
    }
}

#[test]
fn decoded_scores_match_the_full_forward_and_count_greedy_picks() {
    use card::eval::quality::{continuation_nll, decoded_scores};
    let dense = model(6);
    let prompt = random_ids(9, VOCAB, 4);
    let continuation = random_ids(12, VOCAB, 5);
    let (nll, picks) = decoded_scores(&dense, &prompt, &continuation).unwrap();
    let want = continuation_nll(&dense, &prompt, &continuation).unwrap();
    assert!((nll - want).abs() < 1e-4, "{nll} vs {want}");
    assert!(
        picks < continuation.len(),
        "random tokens are not all greedy picks"
    );
    // The model's own greedy continuation is all picks.
    let mut text = prompt.clone();
    let mut greedy = Vec::new();
    for _ in 0..6 {
        let mut pass = HostPass::new(&dense, 1, 64).unwrap();
        pass.forward(&[text.clone()]).unwrap();
        let t = argmax(pass.logits(0, text.len() - 1)) as u32;
        text.push(t);
        greedy.push(t);
    }
    assert_eq!(
        decoded_scores(&dense, &prompt, &greedy).unwrap().1,
        greedy.len()
    );
    // A prompt + continuation longer than the context keeps its end.
    let long = random_ids(70, VOCAB, 7);
    let (nll, _) = decoded_scores(&dense, &long[..60], &long[60..]).unwrap();
    let want = continuation_nll(&dense, &long[..60], &long[60..]).unwrap();
    assert!((nll - want).abs() < 1e-4, "{nll} vs {want}");
}
