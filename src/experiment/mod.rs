//! The paper's experiments as commands. Each experiment is a set of training runs (variants ×
//! seeds) on one preset and one corpus, evaluated the same way, written up as
//! `results/NAME/{report.md, results.csv, *.svg}`. Runs live in `results/NAME/runs/`: a
//! finished run keeps its `result.json` and is skipped on the next call, an interrupted one
//! resumes from its last checkpoint.

pub mod adaptation;
mod bench_cache;
pub mod data_efficiency;
pub mod decoding_calibration;
pub mod ema;
pub mod masking_ablation;
pub mod objectives;
pub mod parallel_decoding;
pub mod plot;
mod runs;
mod stats;
pub mod tail_factor;
mod variants;
pub mod write_up;

use crate::checkpoint;
use crate::config::Config;
use crate::data::load_data;
use crate::data::{Prepared, TextTokenizer};
use crate::eval::report::{evaluate, EvalOptions};
use crate::eval::BoundBudget;
use crate::runtime::{self, device as default_device};
use crate::train::Trainer;
use anyhow::{Context, Result};
pub use runs::{code_version, git_commit};
use runs::{read_metrics, read_result, reusable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ExpOptions {
    pub out: PathBuf,
    /// Seconds-long end-to-end check: 10 steps, one seed, small evaluation.
    pub smoke: bool,
    /// Multiplies the training steps (bigger machines: --scale 10).
    pub scale: f64,
    pub seeds: Vec<u64>,
    pub preset: String,
    /// Extra config overrides applied to every run.
    pub sets: Vec<String>,
    /// Zero-shot tasks (documents per task) when the eval files are installed.
    pub zero_shot_limit: Option<usize>,
    pub eval_data: PathBuf,
    /// The command line, recorded in the report.
    pub command: String,
    /// Start from this checkpoint instead of training one (parallel-decoding), or adapt it
    /// instead of the fetched SmolLM2 (adaptation).
    pub from: Option<PathBuf>,
    /// Training steps of every run (the preset's `train.max_steps` for presets other than
    /// `tiny`, whose experiments keep their own lengths), before `scale`.
    pub steps: Option<usize>,
    /// Evaluation windows per split (validation and each held-out source); None = all.
    pub eval_windows: Option<usize>,
    /// Also score LAMBADA (`zero_shot_limit` passages) where an experiment scores the zero-shot
    /// tasks.
    pub lambada: bool,
    /// `git commit` each finished run's summary (and the report) as it is written.
    pub commit: bool,
}

impl ExpOptions {
    /// Training steps of a run whose default length is `base`.
    pub fn steps(&self, base: usize) -> usize {
        if self.smoke {
            10
        } else {
            let base = self.steps.unwrap_or(base);
            ((base as f64 * self.scale).round() as usize).max(1)
        }
    }

    pub fn seeds(&self) -> Vec<u64> {
        if self.smoke {
            self.seeds.iter().take(1).copied().collect()
        } else {
            self.seeds.clone()
        }
    }

    fn eval_windows(&self) -> Option<usize> {
        if self.smoke {
            Some(4)
        } else {
            self.eval_windows
        }
    }

    /// MDLM/BD3LM evaluation draws: (most per window for the NELBO bound, per zero-shot
    /// choice). Capped below `card eval`'s defaults whenever the run length is set (any preset
    /// but `tiny`, or `--steps`), where a diffusion model's evaluation would otherwise cost
    /// more than its training.
    fn bound_draws(&self) -> (usize, usize) {
        if self.steps.is_some() {
            (8, 4)
        } else {
            (
                BoundBudget::default().max_samples,
                EvalOptions::default().elbo_samples,
            )
        }
    }

    /// What a run's evaluation depends on besides its checkpoint: a finished run is reused
    /// (here or by another experiment) only when this matches, where a run scored on the
    /// zero-shot tasks also answers for a command that does not score them.
    fn eval_settings(&self, zero_shot: bool) -> String {
        format!(
            "windows={:?} draws={:?} zero_shot={:?} lambada={:?}",
            self.eval_windows(),
            self.bound_draws(),
            self.zero_shot_limit.filter(|_| zero_shot),
            self.lambada && zero_shot,
        )
    }
}

/// One training run of an experiment.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Variant name (shared by the seeds of one variant).
    pub variant: String,
    pub sets: Vec<String>,
    pub seed: u64,
    pub steps: usize,
    /// Start from this checkpoint's weights, model shape, tokenizer and config (with the
    /// fine-tuning defaults under the run's overrides) instead of a preset and a random init.
    pub init: Option<PathBuf>,
    /// Score the zero-shot suite (and LAMBADA) when the options ask for it and the files are
    /// installed.
    pub zero_shot: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub variant: String,
    pub seed: u64,
    pub objective: String,
    pub steps: usize,
    pub tokens_seen: u64,
    pub val_loss: f64,
    pub bits_per_byte: f64,
    /// Median training tokens/s over the logged steps.
    pub tokens_per_s: f64,
    /// (step, validation loss) from the run's metrics log.
    pub curve: Vec<(usize, f64)>,
    /// (step, validation bits per byte), with step 0 for a run from a checkpoint.
    #[serde(default)]
    pub bpb_curve: Vec<(usize, f64)>,
    /// Training time (s), evaluations included.
    #[serde(default)]
    pub elapsed_s: f64,
    pub zero_shot_avg: Option<f64>,
    /// (task, length-normalised accuracy, chance) of each zero-shot task.
    #[serde(default)]
    pub zero_shot_tasks: Vec<(String, f64, f64)>,
    /// LAMBADA last-word accuracy (exact scorers only) and target bits per byte.
    #[serde(default)]
    pub lambada_acc: Option<f64>,
    #[serde(default)]
    pub lambada_bpb: Option<f64>,
    /// Bits per byte on each held-out source group.
    #[serde(default)]
    pub heldout: Vec<crate::eval::report::HeldoutScore>,
    /// Which weights the numbers above score ("ema" when the run kept an average), and the
    /// validation bits per byte of the last step's raw weights beside them.
    #[serde(default)]
    pub weights: String,
    #[serde(default)]
    pub raw_bits_per_byte: Option<f64>,
    /// Evaluation time (s) and [`ExpOptions::eval_settings`].
    #[serde(default)]
    pub eval_s: f64,
    #[serde(default)]
    pub eval_settings: String,
    /// `git describe` of the code and the machine that trained the run.
    #[serde(default)]
    pub code_version: String,
    #[serde(default)]
    pub machine: String,
    pub checkpoint: String,
    pub config: String,
    /// [`RESULTS_VERSION`] of the code that produced it (files from before it was recorded
    /// read as 1).
    #[serde(default = "first_results_version")]
    pub results_version: u32,
}

/// Bumped by any change that alters what a run trains or measures (training numerics,
/// evaluation, the result's fields), so that results from older code are rerun, not
/// reused: a finished run is reused only at this version, with its recorded settings.
pub const RESULTS_VERSION: u32 = 2;

fn first_results_version() -> u32 {
    1
}

/// Trains (or resumes, or reuses) runs and caches prepared data between them.
pub struct Runner {
    pub opts: ExpOptions,
    data: HashMap<String, Prepared>,
}

impl Runner {
    pub fn new(opts: ExpOptions) -> Self {
        Self {
            opts,
            data: HashMap::new(),
        }
    }

    pub fn config(&self, spec: &RunSpec) -> Result<Config> {
        let mut sets: Vec<String> = match spec.init {
            Some(_) => crate::train::FINE_TUNE_SETS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            None => Vec::new(),
        };
        sets.extend(self.opts.sets.iter().cloned());
        sets.extend(spec.sets.iter().cloned());
        sets.push(format!("train.seed={}", spec.seed));
        sets.push(format!("train.max_steps={}", spec.steps));
        sets.push(format!("train.eval_every={}", (spec.steps / 10).max(1)));
        sets.push(format!("train.ckpt_every={}", (spec.steps / 4).max(1)));
        if self.opts.smoke {
            sets.push("train.eval_batches=1".into());
        }
        match &spec.init {
            Some(dir) => {
                let path = checkpoint::resolve(dir)?.join("config.toml");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Config::from_toml_with_sets(&text, &sets)
            }
            None => Config::load(&self.opts.preset, &sets),
        }
    }

    /// The corpus of `cfg`, tokenized by `tokenizer` (a starting checkpoint's) or its own.
    fn data_for(&mut self, cfg: &Config, tokenizer: Option<TextTokenizer>) -> Result<&Prepared> {
        let key = format!(
            "{}{}",
            toml::to_string(&cfg.data)?,
            tokenizer.as_ref().map_or(String::new(), |t| t.hash())
        );
        if !self.data.contains_key(&key) {
            let d = load_data(cfg, tokenizer)?;
            self.data.insert(key.clone(), d);
        }
        Ok(&self.data[&key])
    }

    pub fn run_dir(&self, spec: &RunSpec) -> PathBuf {
        self.opts
            .out
            .join("runs")
            .join(format!("{}-s{}", spec.variant, spec.seed))
    }

    pub fn run(&mut self, spec: &RunSpec) -> Result<RunResult> {
        let dir = self.run_dir(spec);
        let done = dir.join("result.json");
        let cfg = self.config(spec)?;
        let zero_shot = spec.zero_shot
            && self.opts.zero_shot_limit.is_some()
            && crate::data::eval_files::task_file(&self.opts.eval_data, "piqa").is_ok();
        let settings = self.opts.eval_settings(zero_shot);
        if done.is_file() {
            let r = read_result(&done)?;
            if let Err(why) = reusable(&r, &cfg, &settings) {
                anyhow::bail!(
                    "{} was {why}: delete it to rerun, or choose another --out",
                    dir.display()
                );
            }
            eprintln!(
                "  {} seed {}: done earlier (val loss {:.4})",
                spec.variant, spec.seed, r.val_loss
            );
            return Ok(r);
        }
        if !dir.join("latest").is_file() {
            if let Some((from, mut r)) = self.finished_elsewhere(spec.seed, &cfg, &settings) {
                std::fs::create_dir_all(&dir)?;
                if from.join("metrics.jsonl").is_file() {
                    std::fs::copy(from.join("metrics.jsonl"), dir.join("metrics.jsonl"))?;
                }
                r.variant = spec.variant.clone();
                crate::runtime::fsutil::write_atomic(
                    &done,
                    serde_json::to_string_pretty(&r)?.as_bytes(),
                )?;
                eprintln!(
                    "  {} seed {}: the same run finished in {} (val loss {:.4})",
                    spec.variant,
                    spec.seed,
                    from.display(),
                    r.val_loss
                );
                self.commit_run(spec, &dir, &r);
                return Ok(r);
            }
        }
        let device = default_device()?;
        eprintln!(
            "  {} seed {}: {} steps ...",
            spec.variant, spec.seed, spec.steps
        );
        {
            let resume = dir.join("latest").is_file();
            let start = match (&spec.init, resume) {
                (_, true) => Some(checkpoint::load(&dir, &device)?),
                (Some(p), false) => Some(checkpoint::load(p, &device)?),
                (None, false) => None,
            };
            // A run from a checkpoint keeps its tokenizer, also when it resumes.
            let tokenizer = match (&spec.init, &start) {
                (Some(_), Some(c)) => Some(TextTokenizer::from_json(&c.tokenizer_json)?),
                _ => None,
            };
            let data = self.data_for(&cfg, tokenizer)?;
            let mut trainer = match start {
                Some(c) if resume => Trainer::resume(cfg.clone(), c, data)?,
                Some(c) => {
                    let weights = c.ema.as_ref().unwrap_or(&c.weights);
                    Trainer::from_checkpoint(cfg.clone(), &c, weights, data)?
                }
                None => Trainer::new(cfg.clone(), data, &device)?,
            };
            trainer.run(&dir, false)?;
            if runtime::stop_requested() {
                anyhow::bail!("interrupted; rerun the same command to resume");
            }
        }
        let started = std::time::Instant::now();
        let loaded = checkpoint::load(&dir, &device)?;
        let ckpt = loaded.open(true)?;
        let eval_opts = EvalOptions {
            max_windows: self.opts.eval_windows(),
            noise_levels: Vec::new(),
            tasks: if zero_shot {
                crate::data::eval_files::TASKS
                    .iter()
                    .map(|t| t.0.to_string())
                    .filter(|t| t != "lambada")
                    .collect()
            } else {
                Vec::new()
            },
            lambada: zero_shot && self.opts.lambada,
            limit: self.opts.zero_shot_limit,
            data_dir: self.opts.eval_data.clone(),
            bound_budget: BoundBudget {
                max_samples: self.opts.bound_draws().0,
                ..BoundBudget::default()
            },
            elbo_samples: self.opts.bound_draws().1,
            ..EvalOptions::default()
        };
        let report = evaluate(&ckpt, &eval_opts)?;
        // The raw weights' validation score beside the average's (the EMA experiment).
        let raw_bits_per_byte = match ckpt.weights {
            "ema" => {
                let raw = EvalOptions {
                    heldout: false,
                    tasks: Vec::new(),
                    lambada: false,
                    ..eval_opts.clone()
                };
                Some(evaluate(&loaded.open(false)?, &raw)?.bits_per_byte)
            }
            _ => None,
        };
        let (curve, bpb_curve, tps) = read_metrics(&dir.join("metrics.jsonl"))?;
        let result = RunResult {
            variant: spec.variant.clone(),
            seed: spec.seed,
            objective: ckpt.state.objective.name().to_string(),
            steps: ckpt.state.step,
            tokens_seen: ckpt.state.tokens_seen,
            val_loss: report.val_loss,
            bits_per_byte: report.bits_per_byte,
            tokens_per_s: tps,
            curve,
            bpb_curve,
            elapsed_s: ckpt.state.elapsed_s,
            zero_shot_avg: report.zero_shot.as_ref().map(|z| z.average_acc_norm),
            zero_shot_tasks: report.zero_shot.as_ref().map_or(Vec::new(), |z| {
                z.tasks
                    .iter()
                    .map(|t| (t.task.clone(), t.acc_norm, t.chance))
                    .collect()
            }),
            lambada_acc: report.lambada.as_ref().and_then(|l| l.accuracy),
            lambada_bpb: report.lambada.as_ref().map(|l| l.bits_per_byte),
            heldout: report.heldout.clone(),
            weights: ckpt.weights.to_string(),
            raw_bits_per_byte,
            eval_s: started.elapsed().as_secs_f64(),
            eval_settings: settings,
            code_version: code_version(),
            machine: write_up::machine().0,
            checkpoint: ckpt.dir.display().to_string(),
            config: ckpt.config.to_toml(),
            results_version: RESULTS_VERSION,
        };
        crate::runtime::fsutil::write_atomic(
            &done,
            serde_json::to_string_pretty(&result)?.as_bytes(),
        )?;
        eprintln!(
            "    val loss {:.4}, {:.4} bits/byte",
            result.val_loss, result.bits_per_byte
        );
        self.commit_run(spec, &dir, &result);
        Ok(result)
    }

    /// A run of another experiment beside this one (`results/*/runs/*`) that trained the same
    /// config and seed and was evaluated the same way.
    fn finished_elsewhere(
        &self,
        seed: u64,
        cfg: &Config,
        settings: &str,
    ) -> Option<(PathBuf, RunResult)> {
        let parent = self.opts.out.parent()?;
        let mut experiments: Vec<PathBuf> = std::fs::read_dir(parent)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p != &self.opts.out)
            .collect();
        experiments.sort();
        for exp in experiments {
            let Ok(runs) = std::fs::read_dir(exp.join("runs")) else {
                continue;
            };
            let mut runs: Vec<PathBuf> = runs.flatten().map(|e| e.path()).collect();
            runs.sort();
            for run in runs {
                let Ok(r) = read_result(&run.join("result.json")) else {
                    continue;
                };
                if r.seed == seed && reusable(&r, cfg, settings).is_ok() {
                    return Some((run, r));
                }
            }
        }
        None
    }

    /// With `--commit`, commit the run's summary so that it survives this machine.
    fn commit_run(&self, spec: &RunSpec, dir: &Path, r: &RunResult) {
        if self.opts.commit && !self.opts.smoke {
            let files = [dir.join("result.json"), dir.join("metrics.jsonl")];
            let name = self
                .opts
                .out
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            let msg = format!(
                "results/{name}: {} seed {} ({} steps, val {:.4} bits/byte)",
                spec.variant, spec.seed, r.steps, r.bits_per_byte
            );
            git_commit(&files, &msg);
        }
    }
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / n;
    let sd = if xs.len() > 1 {
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

/// "1.234 ± 0.010" (± over seeds; no ± for one seed).
pub fn fmt_mean_sd(xs: &[f64], digits: usize) -> String {
    let (m, sd) = mean_sd(xs);
    if xs.len() > 1 {
        format!("{m:.digits$} ± {sd:.digits$}")
    } else {
        format!("{m:.digits$}")
    }
}

pub const NAMES: &[&str] = &[
    "masking-ablation",
    "tail-factor",
    "objectives",
    "decoding-calibration",
    "data-efficiency",
    "ema",
    "parallel-decoding",
    "adaptation",
];

/// Refuse an unknown experiment or options it does not take.
pub fn check(name: &str, opts: &ExpOptions) -> Result<()> {
    if !NAMES.contains(&name) {
        anyhow::bail!("unknown experiment '{name}' (known: {})", NAMES.join(", "));
    }
    if opts.from.is_some() && !["parallel-decoding", "adaptation"].contains(&name) {
        anyhow::bail!(
            "--from applies to parallel-decoding and adaptation only; {name} trains its own runs"
        );
    }
    if name == "adaptation" {
        adaptation::base(opts)?;
    }
    Ok(())
}

pub fn run(name: &str, opts: ExpOptions) -> Result<PathBuf> {
    check(name, &opts)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let mut runner = Runner::new(opts);
    match name {
        "masking-ablation" => masking_ablation::run(&mut runner),
        "tail-factor" => tail_factor::run(&mut runner),
        "objectives" => objectives::run(&mut runner),
        "decoding-calibration" => decoding_calibration::run(&mut runner),
        "data-efficiency" => data_efficiency::run(&mut runner),
        "ema" => ema::run(&mut runner),
        "parallel-decoding" => parallel_decoding::run(&mut runner),
        "adaptation" => adaptation::run(&mut runner),
        other => anyhow::bail!("unknown experiment '{other}' (known: {})", NAMES.join(", ")),
    }?;
    let out = &runner.opts.out;
    if runner.opts.commit && !runner.opts.smoke {
        let mut files: Vec<PathBuf> = std::fs::read_dir(out)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension().is_some_and(|x| {
                        ["md", "csv", "svg", "json"].contains(&&*x.to_string_lossy())
                    })
            })
            .collect();
        files.sort();
        git_commit(&files, &format!("results/{name}: report"));
    }
    Ok(out.join("report.md"))
}

/// The judge of generated text when a pretrained model is fetched (`card data fetch --model
/// smollm2`: SmolLM2-135M under `data/`), else None and each experiment judges by its own
/// model.
pub fn external_judge() -> Option<PathBuf> {
    let run = crate::import::fetch::checkpoint_path(Path::new("data"), "smollm2");
    run.join("latest").is_file().then_some(run)
}
