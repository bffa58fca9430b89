//! The Llama-family shape of the backbone on small random models: grouped-query attention
//! (fewer key/value heads than query heads), a q/k/v bias (Qwen2) or q/k head norms (Qwen3)
//! and an untied head. Each passes the invariants the plain shape does: finite-difference gradients, cached == recomputed logits
//! (candle cache and host backend), and CARD with K = 1 decoding exactly AR's greedy tokens.

use candle_core::{DType, Device, Tensor};
use card::config::ModelConfig;
use card::decode::{ArDecoder, CardDecoder, Decoder, Floor, GenOptions, Sampling};
use card::model::host::HostPass;
use card::model::{ops, tensor_specs, Attention, Backend, Params, Transformer};
use common::{finite_difference_check, full_logits, max_abs_diff, max_slice_diff};
use rand::{Rng, SeedableRng};

mod common;

/// 4 query heads reading 2 key/value heads, a q/k/v bias, an untied head.
fn llama_cfg(vocab: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: vocab,
        d_model: 16,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: Some(2),
        qkv_bias: true,
        d_ff: 24,
        max_seq_len: 48,
        rope_theta: 100_000.0,
        norm_eps: 1e-6,
        tie_embeddings: false,
        ..ModelConfig::default()
    }
}

fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(2..vocab as u32)).collect()
}

/// Qwen3's shape: the same, with q/k head norms instead of the bias.
fn qwen3_cfg(vocab: usize) -> ModelConfig {
    ModelConfig {
        qkv_bias: false,
        qk_norm: true,
        ..llama_cfg(vocab)
    }
}

/// A plain (inference) model with weights large enough to carry signal through every path,
/// biases included (they start at zero).
fn random_model(cfg: &ModelConfig, dtype: DType, seed: u64) -> (Params, Transformer) {
    let params = Params::init(cfg, dtype, &Device::Cpu, seed).unwrap();
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed + 1);
    for (name, v) in params.names.iter().zip(&params.vars) {
        if v.rank() == 2 {
            v.set(&(v.as_tensor() * 10.0).unwrap()).unwrap();
        } else if name.ends_with(".bias") || name.contains("attn.") {
            // Biases start at zero and head norms at one: give both some signal.
            let centre = if name.ends_with(".bias") { 0.0 } else { 1.0 };
            let b: Vec<f64> = (0..v.elem_count())
                .map(|_| centre + rng.random_range(-0.5..0.5))
                .collect();
            let b = Tensor::from_vec(b, v.shape(), &Device::Cpu).unwrap();
            v.set(&b.to_dtype(dtype).unwrap()).unwrap();
        }
    }
    let map = params.to_map().unwrap();
    let model = Transformer::from_tensors(cfg, |n| Ok(map[n].clone())).unwrap();
    (params, model)
}

#[test]
fn the_config_shapes_every_tensor() {
    let cfg = llama_cfg(30);
    cfg.validate().unwrap();
    let specs = tensor_specs(&cfg);
    let shape = |n: &str| specs.iter().find(|s| s.name == n).map(|s| s.shape.clone());
    // 4 query heads and 2 key and 2 value heads of width 4.
    assert_eq!(shape("layers.0.attn.wqkv.weight"), Some(vec![32, 16]));
    assert_eq!(shape("layers.1.attn.wqkv.bias"), Some(vec![32]));
    assert_eq!(shape("head.weight"), Some(vec![30, 16]));
    let n: usize = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    assert_eq!(n, cfg.n_params());
    let qwen3 = qwen3_cfg(30);
    let n: usize = tensor_specs(&qwen3)
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    assert_eq!(n, qwen3.n_params(), "q/k norms counted");
    // Our presets keep their shape: no bias, no key/value head count in the saved config.
    let plain = ModelConfig::default();
    assert!(!tensor_specs(&plain)
        .iter()
        .any(|s| s.name.ends_with(".bias")));
    let toml = toml::to_string(&plain).unwrap();
    assert!(
        !toml.contains("n_kv_heads") && !toml.contains("qkv_bias"),
        "{toml}"
    );
    let back: ModelConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let bad = ModelConfig {
        n_kv_heads: Some(3),
        ..cfg
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("multiple of n_kv_heads"), "{err}");
}

#[test]
fn gradient_check_grouped_query_attention() {
    for cfg in [llama_cfg(11), qwen3_cfg(11)] {
        gradient_check(&cfg);
    }
}

fn gradient_check(cfg: &ModelConfig) {
    let (params, _) = random_model(cfg, DType::F64, 1);
    let model = Transformer::from_params(cfg, &params).unwrap();
    let dev = Device::Cpu;
    let (b, t) = (2, 6);
    let ids = Tensor::from_vec(random_ids(b * t, 11, 2), (b, t), &dev).unwrap();
    let targets = Tensor::from_vec(random_ids(b * t, 11, 3), b * t, &dev).unwrap();
    let w: Vec<f64> = (0..b * t).map(|i| 0.2 + (i % 5) as f64 * 0.3).collect();
    let w = Tensor::from_vec(w, b * t, &dev).unwrap();
    for attn in [Attention::Causal, Attention::Bidirectional] {
        let loss = || {
            let logits = model.forward(&ids, attn, None).unwrap();
            let logits = logits.reshape((b * t, cfg.vocab_size)).unwrap();
            ops::weighted_nll(&logits, &targets, &w, 3.7).unwrap()
        };
        let grads = loss().backward().unwrap();
        let what = format!("{attn:?} qk_norm {}", cfg.qk_norm);
        let checked = finite_difference_check(&params, &grads, 4, &what, || {
            loss().to_scalar::<f64>().unwrap()
        });
        assert!(checked > 30);
    }
}

#[test]
fn cached_logits_equal_full_recomputation() {
    for cfg in [llama_cfg(50), qwen3_cfg(50)] {
        cached_equals_full(&cfg);
    }
}

fn cached_equals_full(cfg: &ModelConfig) {
    let (_, model) = random_model(cfg, DType::F32, 13);
    let toks = random_ids(20, 50, 14);
    let full = full_logits(&model, &toks);
    // The candle cache, in chunks.
    let dev = Device::Cpu;
    let mut cache = model.kv_cache(1, 32).unwrap();
    let mut at = 0;
    for chunk in [7, 1, 5, 1, 6] {
        let ids = Tensor::from_slice(&toks[at..at + chunk], (1, chunk), &dev).unwrap();
        let out = model
            .forward(&ids, Attention::Causal, Some(&mut cache))
            .unwrap();
        for i in 0..chunk {
            let got = out
                .get(0)
                .unwrap()
                .get(i)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let diff = max_slice_diff(&got, &full[at + i]);
            assert!(diff < 1e-3, "candle cache, position {}: {diff}", at + i);
        }
        at += chunk;
    }
    // The host backend, two rows of different lengths.
    assert_eq!(Backend::for_model(&model), Backend::Host);
    let mut engine = HostPass::new(&model, 2, 32).unwrap();
    let other = random_ids(9, 50, 15);
    let other_full = full_logits(&model, &other);
    engine
        .forward(&[toks[..18].to_vec(), other[..4].to_vec()])
        .unwrap();
    engine
        .forward(&[toks[18..].to_vec(), other[4..].to_vec()])
        .unwrap();
    for i in 0..2 {
        assert!(max_slice_diff(engine.logits(0, i), &full[18 + i]) < 1e-3);
    }
    for i in 0..5 {
        assert!(max_slice_diff(engine.logits(1, i), &other_full[4 + i]) < 1e-3);
    }
    // Training (tracked) and inference paths agree too.
    let params = Params::init(cfg, DType::F32, &dev, 13).unwrap();
    let tracked = Transformer::from_params(cfg, &params).unwrap();
    let map = params.to_map().unwrap();
    let plain = Transformer::from_tensors(cfg, |n| Ok(map[n].clone())).unwrap();
    let ids = Tensor::from_slice(&toks, (1, 20), &dev).unwrap();
    let a = tracked.forward(&ids, Attention::Causal, None).unwrap();
    let b = plain.forward(&ids, Attention::Causal, None).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-4);
}

#[test]
fn card_with_one_slot_decodes_ar_greedy() {
    let cfg = llama_cfg(40);
    let (_, model) = random_model(&cfg, DType::F32, 21);
    let prompts = vec![random_ids(5, 40, 22), random_ids(3, 40, 23)];
    for backend in [Backend::Host, Backend::Candle] {
        let o = GenOptions {
            max_new_tokens: 24,
            eos_id: 0,
            mask_id: 1,
            sampling: Sampling::default(),
            seed: 0,
            stop: None,
            backend: Some(backend),
        };
        let ar = ArDecoder
            .generate(&model, &prompts, &o, &mut |_| {})
            .unwrap();
        let card = CardDecoder {
            block_size: 1,
            step_limit: 1,
            threshold: 0.9,
            floor: Floor::Leftmost,
            ..CardDecoder::default()
        };
        let c = card.generate(&model, &prompts, &o, &mut |_| {}).unwrap();
        for (a, b) in ar.rows.iter().zip(&c.rows) {
            assert!(a.tokens.len() >= 10, "{backend:?}: AR stopped early");
            assert_eq!(a.tokens, b.tokens, "{backend:?}");
        }
    }
}
