//! Trainer behaviour on the `tiny` preset: exact resume, corrupted checkpoints rejected,
//! and a short run that learns well below the uniform-guess loss.

use candle_core::Device;
use card::checkpoint;
use card::config::{Config, ObjectiveKind};
use card::data::load_data;
use card::data::Prepared;
use card::train::Trainer;
use std::io::Write;
use std::sync::OnceLock;

mod common;

fn tiny(steps: usize, objective: ObjectiveKind) -> Config {
    let mut cfg = Config::load("tiny", &[]).unwrap();
    cfg.train.max_steps = steps;
    cfg.train.objective = objective;
    cfg.train.eval_every = 0;
    cfg.train.ckpt_every = 0;
    cfg.train.eval_batches = 2;
    cfg
}

fn data() -> &'static Prepared {
    static DATA: OnceLock<Prepared> = OnceLock::new();
    DATA.get_or_init(|| load_data(&tiny(1, ObjectiveKind::Card), None).unwrap())
}

fn weights_of(t: &Trainer) -> Vec<Vec<f32>> {
    t.params
        .vars
        .iter()
        .map(|v| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(6, ObjectiveKind::Card);
    cfg.train.grad_accum = 2; // exercise accumulation across the resume too
    cfg.train.log_every = 1; // a metrics line every step
    let dev = common::device();
    let mut straight = Trainer::new(cfg.clone(), data(), &dev).unwrap();
    straight.run(&dir.path().join("straight"), false).unwrap();

    let mut half = cfg.clone();
    half.train.max_steps = 3;
    let run = dir.path().join("resumed");
    Trainer::new(half, data(), &dev)
        .unwrap()
        .run(&run, false)
        .unwrap();
    let ckpt = checkpoint::load(&run, &dev).unwrap();
    assert_eq!(ckpt.state.step, 3);
    // A run killed after its step-3 checkpoint had logged steps 4 and 5 as well: the resumed
    // run must drop those lines and log each step again, once.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("metrics.jsonl"))
        .unwrap();
    for step in [4, 5] {
        writeln!(log, "{}", serde_json::json!({"step": step, "loss": 99.0})).unwrap();
    }
    drop(log);
    let mut resumed = Trainer::resume(cfg.clone(), ckpt, data()).unwrap();
    resumed.run(&run, false).unwrap();

    let (mut a, mut b) = (resumed.state.clone(), straight.state.clone());
    (a.elapsed_s, b.elapsed_s) = (0.0, 0.0); // wall-clock time is the one field allowed to differ
    assert_eq!(a, b);
    assert_eq!(weights_of(&resumed), weights_of(&straight));
    let (a, b) = (
        resumed.ema.as_ref().unwrap(),
        straight.ema.as_ref().unwrap(),
    );
    for (x, y) in a.weights.iter().zip(&b.weights) {
        assert_eq!(common::max_abs_diff(x, y), 0.0);
    }
    // The metrics log holds each step once, in order, with the straight run's losses.
    let (resumed, straight) = (
        steps_logged(&run),
        steps_logged(&dir.path().join("straight")),
    );
    let steps: Vec<u64> = resumed.iter().map(|x| x.0).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert_eq!(resumed, straight);
}

/// (step, loss) of every line of a run's metrics log, in file order.
fn steps_logged(run: &std::path::Path) -> Vec<(u64, f64)> {
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    log.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn init_starts_from_the_weights_with_a_fresh_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("a");
    let mut first = Trainer::new(tiny(3, ObjectiveKind::Card), data(), &Device::Cpu).unwrap();
    first.run(&run, false).unwrap();
    let mut ckpt = checkpoint::load(&run, &Device::Cpu).unwrap();
    // Another objective and schedule on top of the same weights.
    let mut t = Trainer::from_checkpoint(tiny(2, ObjectiveKind::Arm), &ckpt, &ckpt.weights, data())
        .unwrap();
    assert_eq!(weights_of(&t), weights_of(&first));
    assert_eq!((t.state.step, t.state.tokens_seen, t.opt.t), (0, 0, 0));
    for m in t.opt.m.iter().chain(&t.opt.v) {
        let zero = m.zeros_like().unwrap();
        assert_eq!(
            common::max_abs_diff(m, &zero),
            0.0,
            "optimizer moments start at zero"
        );
    }
    assert_eq!(t.cfg.train.objective, ObjectiveKind::Arm);
    assert_eq!(
        t.state.init_from.as_deref(),
        Some(ckpt.dir.to_str().unwrap())
    );
    let out = dir.path().join("b");
    t.run(&out, false).unwrap();
    assert_ne!(
        weights_of(&t),
        weights_of(&first),
        "training moved the weights"
    );
    let saved = checkpoint::load(&out, &Device::Cpu).unwrap();
    assert_eq!(saved.state.step, 2);
    assert!(saved.state.init_from.is_some());
    // Data tokenized with another tokenizer is refused.
    ckpt.state.tokenizer_hash = "another".into();
    let err = Trainer::from_checkpoint(tiny(2, ObjectiveKind::Card), &ckpt, &ckpt.weights, data())
        .err()
        .expect("a tokenizer mismatch is refused")
        .to_string();
    assert!(err.contains("another tokenizer"), "{err}");
}

#[test]
fn resume_rejects_a_different_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(2, ObjectiveKind::Card);
    Trainer::new(cfg.clone(), data(), &Device::Cpu)
        .unwrap()
        .run(dir.path(), false)
        .unwrap();
    let ckpt = checkpoint::load(dir.path(), &Device::Cpu).unwrap();
    let mut other = cfg.clone();
    other.train.lr *= 2.0;
    let err = Trainer::resume(other, ckpt, data())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("train.lr"), "{err}");
    // max_steps may change: that is what resuming is for.
    let ckpt = checkpoint::load(dir.path(), &Device::Cpu).unwrap();
    let mut longer = cfg;
    longer.train.max_steps = 4;
    assert!(Trainer::resume(longer, ckpt, data()).is_ok());
}

#[test]
fn corrupted_checkpoint_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(tiny(1, ObjectiveKind::Arm), data(), &Device::Cpu)
        .unwrap()
        .run(dir.path(), false)
        .unwrap();
    let ckpt_dir = checkpoint::resolve(dir.path()).unwrap();
    let file = ckpt_dir.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    let err = checkpoint::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("corrupted"), "{err}");
    // Truncation too.
    std::fs::write(&file, &bytes[..n / 2]).unwrap();
    assert!(checkpoint::load(dir.path(), &Device::Cpu).is_err());
}

#[test]
fn tiny_card_run_learns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(200, ObjectiveKind::Card);
    let mut t = Trainer::new(cfg, data(), &Device::Cpu).unwrap();
    let before = t.validate().unwrap();
    let summary = t.run(dir.path(), false).unwrap();
    let uniform = (data().tokenizer.vocab_size() as f64).ln();
    let after = summary.val_loss.unwrap();
    assert!(
        (before - uniform).abs() < 0.5,
        "init {before} vs uniform {uniform}"
    );
    assert!(
        after < uniform - 1.2,
        "val loss {after} vs uniform {uniform}"
    );
}

#[test]
fn frozen_parameters_do_not_change() {
    let mut cfg = tiny(3, ObjectiveKind::Card);
    cfg.train.freeze_embeddings = true;
    cfg.train.freeze_layers = 1;
    cfg.validate().unwrap();
    let mut t = Trainer::new(cfg.clone(), data(), &Device::Cpu).unwrap();
    let before = weights_of(&t);
    for _ in 0..3 {
        t.step().unwrap();
    }
    let after = weights_of(&t);
    let mut moved = 0;
    for ((name, a), b) in t.params.names.iter().zip(&before).zip(&after) {
        let frozen = name == "embed.weight" || name.starts_with("layers.0.");
        if frozen {
            assert_eq!(a, b, "{name} is frozen");
        } else if a != b {
            moved += 1;
        }
    }
    assert!(moved > 5, "the other parameters train ({moved} moved)");
    cfg.train.freeze_layers = cfg.model.n_layers + 1;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("freeze_layers"), "{err}");
}

#[test]
fn ar_fraction_keeps_that_share_of_rows_clean() {
    use card::objective::{Card, Objective};
    use rand::SeedableRng;
    let mut cfg = tiny(1, ObjectiveKind::Card);
    let x0: Vec<u32> = (0..8 * 64).map(|i| 2 + (i % 50) as u32).collect();
    let mask = data().tokenizer.mask_id();
    let masked_rows = |cfg: &Config, seed: u64| -> Vec<usize> {
        let card = Card::new(cfg, mask);
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let nb = card.corrupt(&x0, 8, 64, None, &mut rng);
        (0..8)
            .map(|b| {
                nb.input[b * 63..(b + 1) * 63]
                    .iter()
                    .filter(|&&x| x == mask)
                    .count()
            })
            .collect()
    };
    for seed in 0..5 {
        let rows = masked_rows(&cfg, seed);
        assert!(rows.iter().filter(|&&m| m > 0).count() >= 6, "{rows:?}");
    }
    cfg.noise.ar_fraction = 0.25;
    for seed in 0..5 {
        let rows = masked_rows(&cfg, seed);
        assert_eq!(&rows[..2], &[0, 0], "a quarter of 8 rows clean: {rows:?}");
        assert!(
            rows[2..].iter().filter(|&&m| m > 0).count() >= 5,
            "{rows:?}"
        );
    }
    // 0.3 of 8 rows: 2 always, a third with probability 0.4.
    cfg.noise.ar_fraction = 0.3;
    let clean: usize = (0..200)
        .map(|seed| {
            masked_rows(&cfg, seed)
                .iter()
                .take(3)
                .filter(|&&m| m == 0)
                .count()
        })
        .sum();
    let mean = clean as f64 / 200.0;
    assert!((2.3..2.5).contains(&mean), "mean clean rows {mean}");
    cfg.noise.ar_fraction = 1.5;
    assert!(cfg.validate().is_err());
    // The adaptation knobs (absent from saved configs at their defaults) are --set keys.
    let sets: Vec<String> = [
        "noise.ar_fraction=0.25",
        "train.freeze_embeddings=true",
        "train.freeze_layers=1",
        "model.n_kv_heads=2",
        "model.qkv_bias=true",
    ]
    .map(String::from)
    .to_vec();
    let c = Config::load("tiny", &sets).unwrap();
    assert_eq!(c.noise.ar_fraction, 0.25);
    assert!(c.train.freeze_embeddings && c.model.qkv_bias);
    assert_eq!((c.train.freeze_layers, c.model.n_kv_heads), (1, Some(2)));
}

#[test]
fn t_max_caps_the_noise_and_uniform_mode_scatters_it() {
    use card::objective::{Card, Objective};
    use rand::SeedableRng;
    let (rows, len) = (16, 128);
    let x0: Vec<u32> = (0..rows * len).map(|i| 2 + (i % 50) as u32).collect();
    let mask = data().tokenizer.mask_id();
    let sets: Vec<String> = ["noise.t_max=0.2", "noise.mode=\"uniform\""]
        .map(String::from)
        .to_vec();
    let cfg = Config::load("tiny", &sets).unwrap();
    assert_eq!(cfg.noise.t_max, 0.2);
    let card = Card::new(&cfg, mask);
    let (mut alone, mut early) = (0, 0);
    for seed in 0..4 {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let nb = card.corrupt(&x0, rows, len, None, &mut rng);
        for (b, &t) in nb.t.iter().enumerate() {
            assert!((0.0..0.2).contains(&t), "t = {t}");
            let input = &nb.input[b * (len - 1)..(b + 1) * (len - 1)];
            let m: Vec<bool> = input.iter().map(|&x| x == mask).collect();
            assert!(m.iter().filter(|&&x| x).count() <= (0.2 * len as f64) as usize);
            // A mask after a clean token: what a verifier's first slot sees.
            alone += m.windows(2).filter(|w| !w[0] && w[1]).count();
            early += m[..len / 2].iter().filter(|&&x| x).count();
        }
    }
    // The masks spread over the whole text, not only its tail.
    assert!(
        early > 100 && alone > 200,
        "{early} in the first halves, {alone} after a clean token"
    );
    for bad in ["noise.t_max=0", "noise.t_max=1.5"] {
        let err = Config::load("tiny", &[bad.to_string()]).unwrap_err();
        assert!(format!("{err:#}").contains("t_max"), "{err:#}");
    }
    // The default draws the whole range and is absent from a saved config.
    let d = Config::load("tiny", &[]).unwrap();
    assert_eq!(d.noise.t_max, 1.0);
    assert!(!d.to_toml().contains("t_max"));
}

#[test]
fn an_init_run_starts_exactly_from_its_checkpoint() {
    let mut fresh = Trainer::new(tiny(2, ObjectiveKind::Card), data(), &Device::Cpu).unwrap();
    // A checkpoint of the untrained weights, then a run started from it.
    let ckpt = fresh.checkpoint().unwrap();
    let cfg = fresh.cfg.clone();
    let mut init = Trainer::from_checkpoint(cfg, &ckpt, &ckpt.weights, data()).unwrap();
    // The same weights, first batch and noise (step 0, one seed): the same first loss, and the
    // fresh optimizer takes the same steps as the run that never saved.
    for step in 0..2 {
        let (a, _) = fresh.step().unwrap();
        let (b, _) = init.step().unwrap();
        assert_eq!(a, b, "loss of step {step}");
    }
    assert_eq!(weights_of(&fresh), weights_of(&init));
}

/// A save that fails part-way (here: an unknown extra file, refused after the weights are
/// written) leaves no staging directory and no checkpoint behind.
#[test]
fn a_failed_save_leaves_nothing_behind() {
    let t = Trainer::new(tiny(1, ObjectiveKind::Card), data(), &Device::Cpu).unwrap();
    let mut ckpt = t.checkpoint().unwrap();
    ckpt.extra.insert("bogus.txt".into(), String::new());
    let dir = tempfile::tempdir().unwrap();
    let err = checkpoint::save(dir.path(), &ckpt).unwrap_err();
    assert!(err.to_string().contains("not a checkpoint file"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `cfg` trained for `steps` steps into `run`, and its checkpoint there.
fn trained_for(cfg: &Config, steps: usize, run: &std::path::Path) -> checkpoint::Checkpoint {
    let mut short = cfg.clone();
    short.train.max_steps = steps;
    Trainer::new(short, data(), &Device::Cpu)
        .unwrap()
        .run(run, false)
        .unwrap();
    checkpoint::load(run, &Device::Cpu).unwrap()
}

/// `train.compute = "bf16"` trains (the loss falls like f32's), saves its setting, resumes
/// exactly, and is refused over bf16 weights.
#[test]
fn bf16_compute_trains_and_resumes_exactly() {
    use card::config::{ComputeDtype, DType as ConfigDType};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(8, ObjectiveKind::Card);
    cfg.train.compute = ComputeDtype::Bf16;
    cfg.train.log_every = 1;
    let mut straight = Trainer::new(cfg.clone(), data(), &Device::Cpu).unwrap();
    straight.run(&dir.path().join("straight"), false).unwrap();
    let log = steps_logged(&dir.path().join("straight"));
    assert!(
        log[7].1 < log[0].1 - 0.1,
        "bf16 training did not learn: {log:?}"
    );
    let mut f32_cfg = cfg.clone();
    f32_cfg.train.compute = ComputeDtype::F32;
    let mut f = Trainer::new(f32_cfg, data(), &Device::Cpu).unwrap();
    f.run(&dir.path().join("f32"), false).unwrap();
    let f32_log = steps_logged(&dir.path().join("f32"));
    for ((_, a), (_, b)) in log.iter().zip(&f32_log) {
        assert!((a - b).abs() < 0.05, "bf16 {log:?} vs f32 {f32_log:?}");
    }
    assert_ne!(log, f32_log, "bf16 compute gave f32's losses exactly");
    // Resume halfway: the same weights as the straight run, bit for bit.
    let run = dir.path().join("resumed");
    let ckpt = trained_for(&cfg, 4, &run);
    assert_eq!(ckpt.config.train.compute, ComputeDtype::Bf16);
    let mut resumed = Trainer::resume(cfg.clone(), ckpt, data()).unwrap();
    resumed.run(&run, false).unwrap();
    assert_eq!(weights_of(&resumed), weights_of(&straight));
    // bf16 products over bf16 weights is not a mixed-precision setting.
    let mut bad = cfg;
    bad.train.dtype = ConfigDType::Bf16;
    let err = Trainer::new(bad, data(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("train.compute"), "{err}");
}

/// `train.compute = "auto"` is decided once, when the run starts: the saved config names
/// f32 or bf16, and a resume that asks for `auto` keeps that choice and continues exactly.
#[test]
fn auto_compute_is_decided_once_and_kept_on_resume() {
    use card::config::ComputeDtype;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(4, ObjectiveKind::Card);
    cfg.train.compute = ComputeDtype::Auto;
    let mut straight = Trainer::new(cfg.clone(), data(), &Device::Cpu).unwrap();
    let chosen = straight.cfg.train.compute;
    assert_ne!(chosen, ComputeDtype::Auto, "auto was not resolved");
    straight.run(&dir.path().join("straight"), false).unwrap();
    let run = dir.path().join("resumed");
    let ckpt = trained_for(&cfg, 2, &run);
    assert_eq!(ckpt.config.train.compute, chosen);
    let mut resumed = Trainer::resume(cfg, ckpt, data()).unwrap();
    assert_eq!(resumed.cfg.train.compute, chosen);
    resumed.run(&run, false).unwrap();
    assert_eq!(weights_of(&resumed), weights_of(&straight));
}
