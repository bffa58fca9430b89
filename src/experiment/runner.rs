//! The runs of an experiment: each trained (from a preset or a checkpoint's weights),
//! resumed where interrupted, or reused where it (or the same run of another experiment)
//! finished, then evaluated into its `result.json`.

use super::options::ExpOptions;
use super::runs::{
    code_version, git_commit, read_metrics, read_result, reusable, RunResult, RESULTS_VERSION,
};
use crate::checkpoint::{self, WeightsChoice};
use crate::config::Config;
use crate::data::load_data;
use crate::data::{Prepared, TextTokenizer};
use crate::eval::report::{evaluate, EvalOptions};
use crate::runtime::{self, device as default_device};
use crate::train::RunStart;
use anyhow::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

    /// A run from `spec.init`'s weights (their EMA where kept), else from the preset; an
    /// interrupted run resumes (see [`RunStart::begin`]).
    fn start(&self, spec: &RunSpec) -> RunStart {
        match &spec.init {
            Some(from) => RunStart::Init {
                from: from.clone(),
                preset: None,
                ema: true,
            },
            None => RunStart::Fresh {
                preset: self.opts.preset.clone(),
            },
        }
    }

    /// The run's config, read without loading any checkpoint's weights.
    pub fn config(&self, spec: &RunSpec) -> Result<Config> {
        let mut sets = self.opts.sets.clone();
        sets.extend(spec.sets.iter().cloned());
        sets.push(format!("train.seed={}", spec.seed));
        sets.push(format!("train.max_steps={}", spec.steps));
        sets.push(format!("train.eval_every={}", (spec.steps / 10).max(1)));
        sets.push(format!("train.ckpt_every={}", (spec.steps / 4).max(1)));
        if self.opts.smoke {
            sets.push("train.eval_batches=1".into());
        }
        self.start(spec).config(None, &sets)
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

    /// Tokens in the training split that `spec` reads: epochs are tokens seen over this.
    pub fn train_tokens(&mut self, spec: &RunSpec) -> Result<usize> {
        let cfg = self.config(spec)?;
        Ok(self.data_for(&cfg, None)?.train.len())
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
        if let Some(r) = self.reused(spec, &dir, &cfg, &settings)? {
            return Ok(r);
        }
        let device = default_device()?;
        eprintln!(
            "  {} seed {}: {} steps ...",
            spec.variant, spec.seed, spec.steps
        );
        {
            let begin = self.start(spec).begin(None, Some(&dir), &device)?;
            let data = self.data_for(&cfg, begin.tokenizer()?)?;
            let mut trainer = begin.trainer(cfg.clone(), data, &device)?;
            trainer.run(&dir, false)?;
            if runtime::stop_requested() {
                anyhow::bail!("interrupted; rerun the same command to resume");
            }
        }
        let started = std::time::Instant::now();
        let loaded = checkpoint::load(&dir, &device)?;
        let ckpt = loaded.open(true)?;
        let eval_opts = self.opts.eval_options(zero_shot);
        let report = evaluate(&ckpt, &eval_opts)?;
        // The raw weights' validation score beside the average's (the EMA experiment).
        let raw_bits_per_byte = match ckpt.weights {
            WeightsChoice::Ema => {
                let raw = EvalOptions {
                    heldout: false,
                    tasks: Vec::new(),
                    lambada: false,
                    ..eval_opts.clone()
                };
                Some(evaluate(&loaded.open(false)?, &raw)?.bits_per_byte)
            }
            WeightsChoice::Raw => None,
        };
        let (curve, bpb_curve, tps) = read_metrics(&dir.join("metrics.jsonl"))?;
        let result = RunResult {
            variant: spec.variant.clone(),
            seed: spec.seed,
            objective: ckpt.objective().name().to_string(),
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
            machine: super::write_up::machine().0,
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

    /// The run's result where it finished earlier here, or where the same run finished in
    /// another experiment (copied here); a result here from other settings is refused.
    fn reused(
        &self,
        spec: &RunSpec,
        dir: &Path,
        cfg: &Config,
        settings: &str,
    ) -> Result<Option<RunResult>> {
        let done = dir.join("result.json");
        if done.is_file() {
            let r = read_result(&done)?;
            if let Err(why) = reusable(&r, cfg, settings) {
                anyhow::bail!(
                    "{} was {why}: delete it to rerun, or choose another --out",
                    dir.display()
                );
            }
            eprintln!(
                "  {} seed {}: done earlier (val loss {:.4})",
                spec.variant, spec.seed, r.val_loss
            );
            return Ok(Some(r));
        }
        if !dir.join("latest").is_file() {
            if let Some((from, mut r)) = self.finished_elsewhere(spec.seed, cfg, settings) {
                std::fs::create_dir_all(dir)?;
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
                self.commit_run(spec, dir, &r);
                return Ok(Some(r));
            }
        }
        Ok(None)
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

/// The judge of generated text when a pretrained model is fetched (`card data fetch --model
/// smollm2`: SmolLM2-135M under `data/`), else None and each experiment judges by its own
/// model.
pub fn external_judge() -> Option<PathBuf> {
    let run = crate::import::fetch::checkpoint_path(Path::new("data"), "smollm2");
    run.join("latest").is_file().then_some(run)
}
