//! The diffusion baselines' arithmetic: the BD3LM mask against a hand-built one, BD3LM with
//! one block is MDLM, the NELBO estimators against exact enumeration, gradients through the
//! BD3LM loss, the ELBO scorer. Trained and decoded: `baselines_trained.rs`.

use candle_core::{DType, Device, Tensor};
use card::config::{Config, ModelConfig, ObjectiveKind};
use card::model::visibility::bd3lm_mask;
use card::model::{Params, Transformer};
use card::objective::{Bd3lm, Bound, Mdlm, Objective};
use common::finite_difference_check;
use rand::{Rng, SeedableRng};

mod common;

const MASK: u32 = 1;

/// The mask drawn block by block: for block [s, e), noised rows see noised [s, e) and clean
/// [0, s); clean rows see clean [0, e).
fn hand_built_mask(len: usize, block: usize) -> Vec<Vec<bool>> {
    let mut m = vec![vec![false; 2 * len]; 2 * len];
    let mut s = 0;
    while s < len {
        let e = (s + block).min(len);
        for q in s..e {
            m[q][s..e].fill(true);
            m[q][len..len + s].fill(true);
            m[len + q][len..len + e].fill(true);
        }
        s = e;
    }
    m
}

fn as_rows(flat: &[bool], n: usize) -> Vec<Vec<bool>> {
    flat.chunks(n).map(|r| r.to_vec()).collect()
}

#[test]
fn bd3lm_mask_matches_hand_built_reference() {
    // L = 4, B' = 2 written out: rows x_t[0..4], x_0[0..4]; columns the same.
    let literal = [
        "11000000", "11000000", "00111100", "00111100", "00001100", "00001100", "00001111",
        "00001111",
    ];
    let literal: Vec<Vec<bool>> = literal
        .iter()
        .map(|r| r.chars().map(|c| c == '1').collect())
        .collect();
    assert_eq!(as_rows(&bd3lm_mask(4, 2), 8), literal);
    assert_eq!(hand_built_mask(4, 2), literal);
    // Block sizes 1, 2, 4, and L not a multiple of B' (the last block is shorter).
    for (len, block) in [
        (4, 1),
        (6, 2),
        (8, 4),
        (8, 1),
        (7, 3),
        (7, 4),
        (5, 5),
        (3, 8),
    ] {
        assert_eq!(
            as_rows(&bd3lm_mask(len, block), 2 * len),
            hand_built_mask(len, block),
            "L = {len}, B' = {block}"
        );
    }
}

fn small_model(vocab: usize, scale: f64) -> (Params, Transformer) {
    let cfg = ModelConfig {
        vocab_size: vocab,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        d_ff: 24,
        max_seq_len: 32,
        ..ModelConfig::default()
    };
    let params = Params::init(&cfg, DType::F64, &Device::Cpu, 3).unwrap();
    for v in &params.vars {
        if v.rank() == 2 {
            v.set(&(v.as_tensor() * scale).unwrap()).unwrap();
        }
    }
    let model = Transformer::from_params(&cfg, &params).unwrap();
    (params, model)
}

fn random_x0(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(2..vocab as u32)).collect()
}

fn scalar(t: Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn bd3lm_with_one_block_is_mdlm() {
    let (vocab, batch, len) = (13, 3, 10);
    let (_, model) = small_model(vocab, 4.0);
    let mut cfg = Config::default();
    cfg.bd3lm.block_size = len;
    let mdlm = Mdlm::new(&cfg, MASK);
    let bd3lm = Bd3lm::new(&cfg, MASK);
    let x0 = random_x0(batch * len, vocab, 5);
    for seed in 0..3 {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let nb = mdlm.corrupt(&x0, batch, len, None, &mut rng);
        assert!(nb.input.contains(&MASK) && nb.input.iter().any(|&x| x != MASK));
        let a = scalar(mdlm.loss(&model, &nb).unwrap());
        let b = scalar(bd3lm.loss(&model, &nb).unwrap());
        assert!(a.is_finite() && a > 0.0);
        assert!((a - b).abs() <= 1e-10 * a.abs(), "MDLM {a} vs BD3LM {b}");
        let ra = mdlm.row_nelbo(&model, &nb).unwrap();
        let rb = bd3lm.row_nelbo(&model, &nb).unwrap();
        for (x, y) in ra.iter().zip(&rb) {
            assert!((x - y).abs() <= 1e-10 * x.abs().max(1.0));
        }
        // The per-token normalisation: Σ rows / (B·L) is the loss.
        let total: f64 = ra.iter().sum::<f64>() / (batch * len) as f64;
        assert!((total - a).abs() <= 1e-10 * a);
    }
    // With smaller blocks the noised half sees clean earlier blocks: a different loss.
    cfg.bd3lm.block_size = 2;
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
    let nb = mdlm.corrupt(&x0, batch, len, None, &mut rng);
    let a = scalar(mdlm.loss(&model, &nb).unwrap());
    let b = scalar(Bd3lm::new(&cfg, MASK).loss(&model, &nb).unwrap());
    assert!(
        (a - b).abs() > 1e-6,
        "block size 2 should differ: {a} vs {b}"
    );
}

#[test]
fn bd3lm_noised_blocks_see_no_later_block() {
    // Blocks 0 and 1 fully masked, blocks 2 and 3 clean: changing the tokens of blocks 2 and 3
    // (in both halves) must not change the loss of blocks 0 and 1 (it would under MDLM).
    let (vocab, len, block) = (13, 8, 2);
    let (_, model) = small_model(vocab, 4.0);
    let mut cfg = Config::default();
    cfg.bd3lm.block_size = block;
    let obj = Bd3lm::new(&cfg, MASK);
    let x0 = random_x0(len, vocab, 8);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(1);
    let t = vec![0.6; obj.n_blocks(len)];
    let nb = obj.corrupt(&x0, 1, len, Some(&t), &mut rng);
    let mut a = nb.clone();
    for (i, &tok) in x0.iter().enumerate() {
        let masked = i < 4;
        a.input[i] = if masked { MASK } else { tok };
        a.weights[i] = if masked { 1.0 } else { 0.0 };
    }
    let mut b = a.clone();
    for i in 4..len {
        b.targets[i] = 2 + (b.targets[i] + 1) % (vocab as u32 - 2);
        b.input[i] = b.targets[i];
    }
    let la = obj.row_nelbo(&model, &a).unwrap()[0];
    let lb = obj.row_nelbo(&model, &b).unwrap()[0];
    assert!((la - lb).abs() < 1e-12, "{la} vs {lb}");
}

#[test]
fn diffusion_config_sections_parse_validate_and_clip() {
    let sets = [
        "mdlm.schedule=log-linear",
        "bd3lm.block_size=16",
        "bd3lm.clip_low=0.3",
        "bd3lm.clip_high=0.8",
    ]
    .map(String::from);
    let cfg = Config::load("tiny", &sets).unwrap();
    assert_eq!(cfg.bd3lm.block_size, 16);
    let bad = ["bd3lm.clip_low=0.9", "bd3lm.clip_high=0.5"].map(String::from);
    let err = Config::load("tiny", &bad).unwrap_err();
    assert!(
        format!("{err:#}").contains("clip_low < clip_high"),
        "{err:#}"
    );
    assert!(Config::load("tiny", &["bd3lm.nope=1".to_string()]).is_err());
    // Clipped training levels stay in [0.3, 0.8]; the bound's objective uses [eps, 1].
    let x0 = random_x0(4 * 64, 40, 1);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
    let nb = Bd3lm::new(&cfg, MASK).corrupt(&x0, 4, 64, None, &mut rng);
    assert_eq!(nb.t.len(), 4 * 4);
    assert!(nb.t.iter().all(|&t| (0.3..=0.8).contains(&t)), "{:?}", nb.t);
    let nb = Bd3lm::new(&cfg, MASK).draw(&x0, 4, 64, &mut rng);
    assert!(
        nb.t.iter().any(|&t| !(0.3..=0.8).contains(&t)),
        "{:?}",
        nb.t
    );
    // Log-linear: a masked token's weight is 1/t, its masking probability (1 − ε)t.
    let mdlm = Mdlm::new(&cfg, MASK);
    let nb = mdlm.corrupt(&x0, 4, 64, Some(&[0.5; 4]), &mut rng);
    for (i, &w) in nb.weights.iter().enumerate() {
        assert_eq!(w, if nb.input[i] == MASK { 2.0 } else { 0.0 });
    }
}

/// Mean and standard error.
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

#[test]
fn nelbo_estimators_match_exact_enumeration() {
    // For one sequence of L = 6 the NELBO Σ_k (1/C(L,k)) Σ_{|m|=k} mean_{i∈m} CE_i can be
    // enumerated; both the training form (1/t weights) and the bound's count form estimate it.
    let (vocab, len) = (9, 6);
    let (_, model) = small_model(vocab, 3.0);
    let cfg = Config::default();
    let x0 = random_x0(len, vocab, 11);
    let choose = |n: usize, k: usize| (0..k).fold(1.0, |a, i| a * (n - i) as f64 / (i + 1) as f64);
    let mut exact = card::objective::NoisyBatch {
        batch: 0,
        input: Vec::new(),
        input_len: len,
        targets: Vec::new(),
        weights: Vec::new(),
        denom: 1.0,
        t: Vec::new(),
    };
    for subset in 1u32..(1 << len) {
        let k = subset.count_ones() as usize;
        for (i, &tok) in x0.iter().enumerate() {
            let m = subset >> i & 1 == 1;
            exact.input.push(if m { MASK } else { tok });
            exact.targets.push(tok);
            exact.weights.push(if m {
                (1.0 / (k as f64 * choose(len, k))) as f32
            } else {
                0.0
            });
        }
        exact.batch += 1;
    }
    let mdlm = Mdlm::new(&cfg, MASK);
    let truth: f64 = mdlm.row_nelbo(&model, &exact).unwrap().iter().sum();
    let reps = 3000;
    let many: Vec<u32> = (0..reps).flat_map(|_| x0.iter().copied()).collect();
    let mut se_of = Vec::new();
    for count_form in [true, false] {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(21);
        // The bound's draws (count form) and training's (1/t weights).
        let nb = if count_form {
            mdlm.draw(&many, reps, len, &mut rng)
        } else {
            mdlm.corrupt(&many, reps, len, None, &mut rng)
        };
        let rows = mdlm.row_nelbo(&model, &nb).unwrap();
        let (m, se) = mean_se(&rows);
        assert!(
            (m - truth).abs() < 4.0 * se + 0.01 * truth,
            "count form {count_form}: {m} ± {se} vs {truth}"
        );
        se_of.push(se);
    }
    assert!(
        se_of[0] < se_of[1],
        "the count form has the smaller error: {se_of:?}"
    );
    // BD3LM's count form with one block is MDLM's.
    let mut one = cfg.clone();
    one.train.objective = ObjectiveKind::Bd3lm;
    one.bd3lm.block_size = len;
    let obj = Bd3lm::new(&one, MASK);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(22);
    let nb = obj.draw(&many, reps, len, &mut rng);
    let (m, se) = mean_se(&obj.row_nelbo(&model, &nb).unwrap());
    assert!(
        (m - truth).abs() < 4.0 * se,
        "BD3LM count form {m} ± {se} vs {truth}"
    );
}

#[test]
fn gradient_check_through_bd3lm_loss() {
    let (vocab, batch, len) = (11, 2, 6);
    let (params, model) = small_model(vocab, 10.0);
    let mut cfg = Config::default();
    cfg.bd3lm.block_size = 2;
    let obj = Bd3lm::new(&cfg, MASK);
    let x0 = random_x0(batch * len, vocab, 4);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(2);
    let nb = obj.corrupt(&x0, batch, len, None, &mut rng);
    let loss = obj.loss(&model, &nb).unwrap();
    let grads = loss.backward().unwrap();
    let checked = finite_difference_check(&params, &grads, 3, "bd3lm", || {
        scalar(obj.loss(&model, &nb).unwrap())
    });
    assert!(checked > 20);
}

#[test]
fn elbo_scorer_is_exact_for_one_token_and_deterministic() {
    use card::eval::zero_shot::{ElboScorer, Scorer};
    use card::model::Attention;
    let (_p, model) = small_model(23, 3.0);
    let mut cfg = Config::default();
    cfg.train.objective = ObjectiveKind::Mdlm;
    let mdlm = Mdlm::new(&cfg, 1);
    let scorer = ElboScorer {
        model: &model,
        bound: &mdlm,
        samples: 4,
        seed: 0,
    };
    let ctx = random_x0(9, 23, 5);
    // One continuation token: every draw masks exactly it with weight 1, so the bound is
    // log p(x | context, [MASK]) under SUBS — computed here by hand.
    let (ll, greedy) = scorer.loglik(&ctx, &[7]).unwrap();
    assert!(greedy.is_none());
    let mut ids = ctx.clone();
    ids.push(1);
    let input = Tensor::from_vec(ids, (1, 10), &Device::Cpu).unwrap();
    let logits = model
        .forward(&input, Attention::Bidirectional, None)
        .unwrap();
    let row: Vec<f64> = logits
        .squeeze(0)
        .unwrap()
        .get(9)
        .unwrap()
        .to_vec1()
        .unwrap();
    let lse = row
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, x)| x.exp())
        .sum::<f64>()
        .ln();
    assert!(
        (ll - (row[7] - lse)).abs() < 1e-9,
        "{ll} vs {}",
        row[7] - lse
    );
    // Longer continuations: a bound below the one-token value, the same for the same seed.
    let (a, _) = scorer.loglik(&ctx, &[7, 8, 9, 10]).unwrap();
    let (b, _) = scorer.loglik(&ctx, &[7, 8, 9, 10]).unwrap();
    assert_eq!(a, b);
    assert!(a < ll);
}
