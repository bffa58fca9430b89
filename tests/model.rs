//! Model invariants: finite-difference gradient checks, every parameter trained, CARD at
//! t = 0 equals ARM (under the default Σw normalisation; under `"count"` it is ARM/β), the
//! count normalisation's value by hand, and cached decoding equals full recomputation (the
//! forward paths against a plain reference are in `tests/reference.rs`).

use candle_core::{DType, Device, Tensor, Var};
use card::config::{Config, LossNorm, ModelConfig};
use card::model::{ops, tensor_specs, Attention, KvCache, Params, Transformer};
use card::objective::{Arm, Card, Objective};
use common::{finite_difference_check, max_abs_diff};
use rand::SeedableRng;

mod common;
use common::{random_ids, small_cfg};

/// Weighted next-token loss under a given attention, as a scalar f64.
fn loss_of(
    model: &Transformer,
    ids: &Tensor,
    targets: &Tensor,
    w: &Tensor,
    attn: Attention,
) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let logits = model.forward(ids, attn, None).unwrap();
    let logits = logits.reshape((b * t, model.cfg.vocab_size)).unwrap();
    ops::weighted_nll(&logits, targets, w, 3.7).unwrap()
}

fn gradient_check(attn_kind: &str) {
    let cfg = small_cfg(11);
    let dev = common::device();
    let params = Params::init(&cfg, DType::F64, &dev, 1).unwrap();
    // Larger weights than the default init so every path carries signal.
    for v in &params.vars {
        if v.rank() == 2 {
            v.set(&(v.as_tensor() * 10.0).unwrap()).unwrap();
        }
    }
    let model = Transformer::from_params(&cfg, &params).unwrap();
    let (b, t) = (2, 6);
    let ids = Tensor::from_vec(random_ids(b * t, 11, 2), (b, t), &dev).unwrap();
    let targets = Tensor::from_vec(random_ids(b * t, 11, 3), b * t, &dev).unwrap();
    let w: Vec<f64> = (0..b * t).map(|i| 0.2 + (i % 5) as f64 * 0.3).collect();
    let w = Tensor::from_vec(w, b * t, &dev).unwrap();
    // An explicit mask that is neither causal nor full: query i sees keys j with (i + j) % 3 != 1 or j == i.
    let mask: Vec<f64> = (0..t)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if (i + j) % 3 != 1 || i == j {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
    let attn = match attn_kind {
        "causal" => Attention::Causal,
        "bidirectional" => Attention::Bidirectional,
        _ => Attention::Mask(&mask),
    };
    let loss = loss_of(&model, &ids, &targets, &w, attn);
    let grads = loss.backward().unwrap();
    let checked = finite_difference_check(&params, &grads, 4, attn_kind, || {
        loss_of(&model, &ids, &targets, &w, attn)
            .to_scalar::<f64>()
            .unwrap()
    });
    assert!(checked > 30);
}

#[test]
fn gradient_check_causal() {
    gradient_check("causal");
}

#[test]
fn gradient_check_bidirectional() {
    gradient_check("bidirectional");
}

#[test]
fn gradient_check_explicit_mask() {
    gradient_check("mask");
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    let mut cfg = Config {
        model: small_cfg(40),
        ..Config::default()
    };
    cfg.train.seq_len = 16;
    let dev = common::device();
    let params = Params::init(&cfg.model, DType::F32, &dev, 4).unwrap();
    let model = Transformer::from_params(&cfg.model, &params).unwrap();
    let card = Card::new(&cfg, 1);
    let x0 = random_ids(4 * 16, 40, 5);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(6);
    let nb = card.corrupt(&x0, 4, 16, Some(&[0.3, 0.5, 0.7, 0.9]), &mut rng);
    let grads = card.loss(&model, &nb).unwrap().backward().unwrap();
    for (name, var) in params.names.iter().zip(&params.vars) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn card_at_zero_noise_equals_arm() {
    let mut cfg = Config {
        model: small_cfg(40),
        ..Config::default()
    };
    // The weights 1/β cancel under the default Σw normalisation, which this reduction
    // needs: under "count" the same batch gives ARM/β (see the next test).
    cfg.weights.beta = 2.0;
    assert_eq!(cfg.weights.normalize, LossNorm::Weight);
    let dev = Device::Cpu;
    let params = Params::init(&cfg.model, DType::F32, &dev, 7).unwrap();
    let model = Transformer::from_params(&cfg.model, &params).unwrap();
    let x0 = random_ids(3 * 20, 40, 8);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
    let card = Card::new(&cfg, 1);
    let nb_card = card.corrupt(&x0, 3, 20, Some(&[0.0; 3]), &mut rng);
    assert!(
        nb_card.weights.iter().all(|&w| (w - 0.5).abs() < 1e-7),
        "weights must be 1/β"
    );
    assert!(!nb_card.input.contains(&1), "no [MASK] at t = 0");
    let nb_arm = Arm.corrupt(&x0, 3, 20, None, &mut rng);
    assert_eq!(nb_card.input, nb_arm.input);
    assert_eq!(nb_card.targets, nb_arm.targets);
    let a = card
        .loss(&model, &nb_card)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let b = Arm
        .loss(&model, &nb_arm)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((a - b).abs() < 1e-6, "card {a} arm {b}");
    // And with noise the two differ (the test can fail).
    let nb_noisy = card.corrupt(&x0, 3, 20, Some(&[0.5; 3]), &mut rng);
    let c = card
        .loss(&model, &nb_noisy)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((c - b).abs() > 1e-4);
}

/// The spec's weights w_n = 1 / (β + S_n), S_n = Σ_{i<n} C_i (1 − p)^{n−1−i} with
/// C_i = m_i (1 + m_{i−1}), for targets n = 2..L of a row whose inputs 1..L−1 are masked
/// where `mask` says (the explicit double sum, not the crate's recurrence).
fn spec_weights(mask: &[bool], p: f64, beta: f64) -> Vec<f64> {
    let m = |i: usize| {
        if i == 0 {
            0.0
        } else {
            mask[i - 1] as u8 as f64
        }
    };
    let c = |i: usize| m(i) * (1.0 + m(i - 1));
    (2..=mask.len() + 1)
        .map(|n| {
            let s: f64 = (1..n)
                .map(|i| c(i) * (1.0 - p).powi((n - 1 - i) as i32))
                .sum();
            1.0 / (beta + s)
        })
        .collect()
}

/// −log softmax(logits)[target] in f64, by a loop.
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits
        .iter()
        .map(|&v| v as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + z.ln() - logits[target as usize] as f64
}

#[test]
fn count_normalisation_divides_by_the_number_of_targets() {
    let mut cfg = Config {
        model: small_cfg(40),
        ..Config::default()
    };
    cfg.weights.beta = 2.0;
    let params = Params::init(&cfg.model, DType::F32, &Device::Cpu, 7).unwrap();
    let model = Transformer::from_params(&cfg.model, &params).unwrap();
    let (b, l) = (2, 10);
    let x0 = random_ids(b * l, 40, 8); // ids ≥ 2: none is [MASK] = 1
    let batch = |norm: LossNorm, t: [f64; 2]| {
        let mut c = cfg.clone();
        c.weights.normalize = norm;
        let card = Card::new(&c, 1);
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        let nb = card.corrupt(&x0, b, l, Some(&t), &mut rng);
        let loss = card.loss(&model, &nb).unwrap().to_scalar::<f32>().unwrap() as f64;
        (nb, loss)
    };
    let (nb, count) = batch(LossNorm::Count, [0.0, 0.6]);
    let (nb_w, weight) = batch(LossNorm::Weight, [0.0, 0.6]);
    assert_eq!(nb.input, nb_w.input, "the same draws either way");
    let n = b * (l - 1);
    assert_eq!(nb.denom, n as f64);
    // Weights by the spec's formula from the masks the batch holds.
    let mut w = Vec::new();
    for r in 0..b {
        let mask: Vec<bool> = nb.input[r * (l - 1)..(r + 1) * (l - 1)]
            .iter()
            .map(|&x| x == 1)
            .collect();
        assert_eq!(
            mask.iter().any(|&m| m),
            r == 1,
            "row {r}: masks only at t > 0"
        );
        w.extend(spec_weights(&mask, cfg.weights.p, cfg.weights.beta));
    }
    for (a, e) in nb.weights.iter().zip(&w) {
        assert!((*a as f64 - e).abs() < 1e-6, "weight {a} vs {e}");
    }
    // Σ w·CE by hand from the model's logits.
    let ids = Tensor::from_vec(nb.input.clone(), (b, l - 1), &Device::Cpu).unwrap();
    let logits = model.forward(&ids, Attention::Causal, None).unwrap();
    let logits = logits.reshape((n, 40)).unwrap().to_vec2::<f32>().unwrap();
    let ce: Vec<f64> = (0..n).map(|i| nll(&logits[i], nb.targets[i])).collect();
    let weighted: f64 = w.iter().zip(&ce).map(|(w, c)| w * c).sum();
    let sum_w: f64 = w.iter().sum();
    assert!(
        sum_w < n as f64 * 0.5,
        "masks lower the weights below 1/β ({sum_w})"
    );
    let close = |a: f64, e: f64| (a - e).abs() < 1e-5 * e;
    assert!(
        close(count, weighted / n as f64),
        "count: {count} vs {}",
        weighted / n as f64
    );
    assert!(
        close(weight, weighted / sum_w),
        "weight: {weight} vs {}",
        weighted / sum_w
    );
    // At t = 0 every w is 1/β: Σw normalisation gives the ARM loss, count gives ARM/β.
    let (_, count0) = batch(LossNorm::Count, [0.0, 0.0]);
    let (_, weight0) = batch(LossNorm::Weight, [0.0, 0.0]);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
    let arm = Arm.loss(&model, &Arm.corrupt(&x0, b, l, None, &mut rng));
    let arm = arm.unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!(
        close(weight0, arm),
        "weight at t = 0: {weight0} vs ARM {arm}"
    );
    assert!(
        close(count0, arm / 2.0),
        "count at t = 0: {count0} vs ARM/β {}",
        arm / 2.0
    );
}

fn plain_model(cfg: &ModelConfig, params: &Params) -> Transformer {
    let map = params.to_map().unwrap();
    Transformer::from_tensors(cfg, |n| Ok(map[n].clone())).unwrap()
}

#[test]
fn cached_logits_equal_full_recomputation() {
    let cfg = small_cfg(50);
    let dev = common::device();
    let params = Params::init(&cfg, DType::F32, &dev, 13).unwrap();
    let model = plain_model(&cfg, &params);
    let toks = random_ids(20, 50, 14);
    let full = model
        .forward(
            &Tensor::from_vec(toks.clone(), (1, 20), &dev).unwrap(),
            Attention::Causal,
            None,
        )
        .unwrap();
    let mut cache = KvCache::new(2, 1, 2, 8, 32, DType::F32, &dev).unwrap();
    let run = |cache: &mut KvCache, s: &[u32]| {
        let ids = Tensor::from_vec(s.to_vec(), (1, s.len()), &dev).unwrap();
        model.forward(&ids, Attention::Causal, Some(cache)).unwrap()
    };
    let p = run(&mut cache, &toks[..8]);
    assert!(max_abs_diff(&p, &full.narrow(1, 0, 8).unwrap()) < 1e-4);
    // Draft 5 wrong tokens (scratch), roll back, then append the true continuation.
    let _ = run(&mut cache, &[3, 3, 3, 3, 3]);
    cache.truncate(8);
    let a = run(&mut cache, &toks[8..10]);
    assert!(max_abs_diff(&a, &full.narrow(1, 8, 2).unwrap()) < 1e-4);
    for i in 10..20 {
        let step = run(&mut cache, &toks[i..i + 1]);
        assert!(
            max_abs_diff(&step, &full.narrow(1, i, 1).unwrap()) < 1e-4,
            "position {i}"
        );
    }
    assert_eq!(cache.len(), 20);
}

#[test]
fn parameter_count_matches_config() {
    for preset in ["tiny", "small", "bench-5m"] {
        let mut cfg = Config::load(preset, &[]).unwrap();
        cfg.model.vocab_size = 512;
        let n: usize = tensor_specs(&cfg.model)
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        assert_eq!(n, cfg.model.n_params());
        let params = Params::init(&cfg.model, DType::F32, &Device::Cpu, 0).unwrap();
        assert_eq!(params.count(), n);
    }
    let tiny = Config::load("tiny", &[]).unwrap();
    assert!(tiny.model.n_params() < 1_000_000);
    let big = Config::load("paper-1b", &[]).unwrap();
    let n = big.model.n_params();
    assert!(
        (900_000_000..1_200_000_000).contains(&n),
        "paper-1b has {n}"
    );
}

#[test]
fn var_updates_reach_the_model() {
    // The model holds the Vars' storage: an optimizer's in-place set must change its output.
    let cfg = small_cfg(20);
    let params = Params::init(&cfg, DType::F32, &Device::Cpu, 3).unwrap();
    let model = Transformer::from_params(&cfg, &params).unwrap();
    let ids = Tensor::from_vec(vec![2u32, 3, 4], (1, 3), &Device::Cpu).unwrap();
    let before = model.forward(&ids, Attention::Causal, None).unwrap();
    let v: &Var = &params.vars[0];
    v.set(&(v.as_tensor() * 2.0).unwrap()).unwrap();
    let after = model.forward(&ids, Attention::Causal, None).unwrap();
    assert!(max_abs_diff(&before, &after) > 1e-3);
}
