//! The diffusion baselines trained and decoded: the NELBO bound on validation (finite,
//! seeded, falling with training), the MDLM and BD3LM samplers, and the CLI around them.
//! Skipping unchanged forwards is the decoder's own: it runs on the uniform-logits model.

use candle_core::Device;
use card::checkpoint;
use card::config::{Config, ObjectiveKind};
use card::data::Prepared;
use card::data::{eval_windows, load_data};
use card::decode::{
    Bd3lmDecoder, Decoder, GenOptions, Generation, MdlmDecoder, Reveal, Sampling, StepTrace,
};
use card::eval::{held_out, BoundBudget};
use card::model::Transformer;
use card::objective;
use card::train::Trainer;
use common::{assert_success, card, last_json};
use std::sync::OnceLock;

mod common;

fn tiny(objective: ObjectiveKind) -> Config {
    let mut cfg = Config::load("tiny", &[]).unwrap();
    cfg.train.objective = objective;
    cfg.train.eval_every = 0;
    cfg.train.ckpt_every = 0;
    cfg.train.batch_size = 8;
    cfg.train.warmup_steps = 5;
    cfg.bd3lm.block_size = 4;
    cfg
}

fn data() -> &'static Prepared {
    static DATA: OnceLock<Prepared> = OnceLock::new();
    DATA.get_or_init(|| load_data(&tiny(ObjectiveKind::Mdlm), None).unwrap())
}

const STEPS: usize = 30;

/// (bound before training, after, the trained model) per objective.
fn trained(objective: ObjectiveKind) -> &'static (f64, f64, Transformer) {
    static MDLM: OnceLock<(f64, f64, Transformer)> = OnceLock::new();
    static BD3LM: OnceLock<(f64, f64, Transformer)> = OnceLock::new();
    let cell = if objective == ObjectiveKind::Mdlm {
        &MDLM
    } else {
        &BD3LM
    };
    cell.get_or_init(|| {
        let cfg = tiny(objective);
        let mut t = Trainer::new(cfg.clone(), data(), &Device::Cpu).unwrap();
        let before = bound(&cfg, &t.eval_model().unwrap(), 7);
        for _ in 0..STEPS {
            t.step().unwrap();
        }
        let model = t.eval_model().unwrap();
        let after = bound(&cfg, &model, 7);
        (before, after, model)
    })
}

fn bound(cfg: &Config, model: &Transformer, seed: u64) -> f64 {
    let windows = eval_windows(&data().val, cfg.train.seq_len, Some(16));
    let obj = objective::build(cfg, data().tokenizer.mask_id());
    let budget = BoundBudget {
        min_samples: 2,
        max_samples: 2,
        target_se: 0.0,
    };
    let score = held_out(model, obj.as_ref(), &windows, 16, budget, seed).unwrap();
    let b = score
        .bound
        .expect("the diffusion objectives are scored by a bound");
    assert!(b.nats_per_token.is_finite() && b.se.is_finite() && b.se > 0.0);
    assert_eq!(b.t_samples, 2);
    b.nats_per_token
}

#[test]
fn nelbo_is_finite_seeded_and_falls_with_training() {
    for obj in [ObjectiveKind::Mdlm, ObjectiveKind::Bd3lm] {
        let (before, after, model) = trained(obj);
        eprintln!("{obj:?}: NELBO bound {before:.3} -> {after:.3} nats/token");
        let cfg = tiny(obj);
        assert_eq!(
            bound(&cfg, model, 7),
            *after,
            "{obj:?}: same seed, same bound"
        );
        assert_ne!(bound(&cfg, model, 8), *after, "{obj:?}: the seed matters");
        let uniform = (data().tokenizer.vocab_size() as f64).ln();
        assert!(
            *after < before - 0.5 && *after < uniform,
            "{obj:?}: bound {before} -> {after} (uniform {uniform})"
        );
    }
}

fn opts(max_new: usize, sampling: Sampling, seed: u64) -> GenOptions<'static> {
    GenOptions {
        max_new_tokens: max_new,
        // An id the model cannot emit, so every row runs to its full length.
        eos_id: u32::MAX,
        mask_id: data().tokenizer.mask_id(),
        sampling,
        seed,
        stop: None,
        backend: None,
    }
}

fn prompts() -> Vec<Vec<u32>> {
    ["Alice was beginning", "The Queen", "'Off"]
        .iter()
        .map(|p| data().tokenizer.encode(p).unwrap())
        .collect()
}

fn run(d: &dyn Decoder, model: &Transformer, p: &[Vec<u32>], o: &GenOptions) -> Generation {
    let mut steps: Vec<StepTrace> = Vec::new();
    let g = d
        .generate(model, p, o, &mut |s| steps.push(s.clone()))
        .unwrap();
    assert!(!steps.is_empty());
    let committed: usize = steps.iter().map(|s| s.committed.len()).sum();
    assert_eq!(
        committed,
        g.generated_tokens(),
        "every token committed once"
    );
    g
}

fn tokens(g: &Generation) -> Vec<Vec<u32>> {
    g.rows.iter().map(|r| r.tokens.clone()).collect()
}

#[test]
fn samplers_fill_the_length_without_masks_and_are_seeded() {
    let warm = Sampling {
        temperature: 1.0,
        ..Sampling::default()
    };
    let decoders: Vec<(ObjectiveKind, Box<dyn Decoder>)> = vec![
        (ObjectiveKind::Mdlm, Box::new(MdlmDecoder { steps: 12 })),
        (ObjectiveKind::Mdlm, Box::new(MdlmDecoder::default())),
        (
            ObjectiveKind::Bd3lm,
            Box::new(Bd3lmDecoder {
                block_size: 4,
                ..Bd3lmDecoder::default()
            }),
        ),
        (
            ObjectiveKind::Bd3lm,
            Box::new(Bd3lmDecoder {
                block_size: 4,
                steps: 2,
                reveal: Reveal::Confidence,
                threshold: 0.5,
            }),
        ),
    ];
    for (obj, d) in &decoders {
        assert!(d.fits(*obj));
        let model = &trained(*obj).2;
        for n in [1, 13] {
            let g = run(d.as_ref(), model, &prompts(), &opts(n, warm.clone(), 3));
            for row in &g.rows {
                assert_eq!(row.tokens.len(), n, "{}", d.name());
                assert!(!row.tokens.contains(&data().tokenizer.mask_id()));
            }
            let again = run(d.as_ref(), model, &prompts(), &opts(n, warm.clone(), 3));
            assert_eq!(tokens(&g), tokens(&again), "{}: seeded", d.name());
        }
        let a = run(d.as_ref(), model, &prompts(), &opts(13, warm.clone(), 3));
        let b = run(d.as_ref(), model, &prompts(), &opts(13, warm.clone(), 4));
        assert_ne!(tokens(&a), tokens(&b), "{}: the seed matters", d.name());
        // A batch decodes each row as it would alone (ragged rows, per-row caches).
        let greedy = Sampling::default();
        let batch = run(d.as_ref(), model, &prompts(), &opts(9, greedy.clone(), 0));
        for (i, p) in prompts().iter().enumerate() {
            let o = opts(9, greedy.clone(), 0);
            let alone = run(d.as_ref(), model, std::slice::from_ref(p), &o);
            assert_eq!(
                alone.rows[0].tokens,
                batch.rows[i].tokens,
                "{} row {i}",
                d.name()
            );
        }
    }
}

#[test]
fn mdlm_skips_forwards_when_nothing_changed() {
    let model = &common::uniform::uniform().model;
    let d = MdlmDecoder { steps: 64 };
    let g = run(&d, model, &prompts()[..1], &opts(8, Sampling::default(), 1));
    // 64 steps reveal 8 tokens: at most 8 passes change the canvas, so at most 8 forwards.
    assert!(g.forward_passes <= 8, "{} forwards", g.forward_passes);
    assert_eq!(g.rows[0].tokens.len(), 8);
}

#[test]
fn cli_trains_evaluates_and_decodes_an_mdlm_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let out = card(
        &[
            "train",
            "--preset",
            "tiny",
            "--objective",
            "mdlm",
            "--max-steps",
            "2",
            "--quiet",
            "--out",
            "run",
        ],
        cwd,
    );
    assert_success(&out);
    let ckpt = checkpoint::load(&cwd.join("run"), &Device::Cpu).unwrap();
    assert_eq!(ckpt.objective(), ObjectiveKind::Mdlm);

    let eval = card(&["eval", "run", "--max-windows", "16"], cwd);
    let text = String::from_utf8_lossy(&eval.stdout);
    assert_success(&eval);
    assert!(
        text.contains("val loss     ≤") && text.contains("perplexity   ≤"),
        "{text}"
    );
    assert!(text.contains("NELBO"), "{text}");

    let json = card(&["eval", "run", "--max-windows", "16", "--json"], cwd);
    let v = last_json(&json);
    assert_eq!(v["bound"], true);
    assert_eq!(v["estimator"], "nelbo");
    assert!(v["val_loss"].as_f64().unwrap().is_finite());
    assert!(v["val_loss_se"].as_f64().unwrap() >= 0.0);

    let refused = card(
        &["generate", "run", "--prompt", "Alice", "--decoder", "card"],
        cwd,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("decoders that fit: mdlm") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let gen = card(
        &[
            "generate",
            "run",
            "--prompt",
            "Alice",
            "--decoder",
            "mdlm",
            "--steps",
            "4",
            "--max-new-tokens",
            "6",
            "--json",
        ],
        cwd,
    );
    assert_success(&gen);
    let v = last_json(&gen);
    assert_eq!(v["decoder"], "mdlm");
    assert!(v["forward_passes"].as_u64().unwrap() <= 4);
    // Without --decoder the checkpoint's own sampler runs, with the settings given.
    let args = ["--max-new-tokens", "6", "--json", "--steps"];
    let own = |steps: &str| {
        let mut a = vec!["generate", "run", "--prompt", "Alice"];
        a.extend(args);
        a.push(steps);
        card(&a, cwd)
    };
    let v = last_json(&own("2"));
    assert_eq!(v["decoder"], "mdlm");
    assert!(v["forward_passes"].as_u64().unwrap() <= 2, "{v}");
    let zero = own("0");
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("steps must be at least 1"));
}
