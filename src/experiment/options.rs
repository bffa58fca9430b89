//! What an experiment command asks for: output, seeds, scale, preset, overrides and how
//! its runs are evaluated.

use crate::eval::report::EvalOptions;
use crate::eval::BoundBudget;
use std::path::PathBuf;

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

    pub(super) fn eval_windows(&self) -> Option<usize> {
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
    pub(super) fn bound_draws(&self) -> (usize, usize) {
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
    pub(super) fn eval_settings(&self, zero_shot: bool) -> String {
        format!(
            "windows={:?} draws={:?} zero_shot={:?} lambada={:?}",
            self.eval_windows(),
            self.bound_draws(),
            self.zero_shot_limit.filter(|_| zero_shot),
            self.lambada && zero_shot,
        )
    }

    /// How each run is evaluated (the zero-shot tasks and LAMBADA where `zero_shot`).
    pub(super) fn eval_options(&self, zero_shot: bool) -> EvalOptions {
        EvalOptions {
            max_windows: self.eval_windows(),
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
            lambada: zero_shot && self.lambada,
            limit: self.zero_shot_limit,
            data_dir: self.eval_data.clone(),
            bound_budget: BoundBudget {
                max_samples: self.bound_draws().0,
                ..BoundBudget::default()
            },
            elbo_samples: self.bound_draws().1,
            ..EvalOptions::default()
        }
    }
}
