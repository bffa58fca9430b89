//! How a training run starts, decided in one place for `card train`, the experiments and
//! self-distillation: fresh from a preset, from a checkpoint's weights (`--init`), or resumed
//! exactly; the config each takes, the tokenizer its data is tokenized with and the weights
//! its trainer begins from.

use super::{Trainer, FINE_TUNE_SETS};
use crate::checkpoint::{self, Checkpoint, WeightsChoice};
use crate::config::Config;
use crate::data::{Prepared, TextTokenizer};
use anyhow::Result;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// Where a training run's config and first weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStart {
    /// Step 0 from a random init; the config is a preset's (a name or a .toml file).
    Fresh { preset: String },
    /// Step 0 (a new optimizer and schedule) from a checkpoint's weights (its EMA where it
    /// kept one and `ema` asks for it), model shape and tokenizer. The config is the
    /// checkpoint's, or `preset`'s, under the fine-tuning defaults ([`FINE_TUNE_SETS`]).
    Init {
        from: PathBuf,
        preset: Option<String>,
        ema: bool,
    },
    /// Continue the run in `dir` exactly where its last checkpoint left off; the config is
    /// the saved one, or `preset`'s (the resume refuses one that trains differently).
    Resume {
        dir: PathBuf,
        preset: Option<String>,
    },
}

impl RunStart {
    /// The checkpoint this start reads, loaded and verified (None for a fresh run).
    pub fn load(&self, device: &Device) -> Result<Option<Checkpoint>> {
        match self {
            Self::Fresh { .. } => Ok(None),
            Self::Init { from: dir, .. } | Self::Resume { dir, .. } => {
                Ok(Some(checkpoint::load(dir, device)?))
            }
        }
    }

    /// The run's config: the preset's, or the checkpoint's own (`saved`, read from disk
    /// without the weights where not given), with `sets` on top; for a run from a
    /// checkpoint's weights, the fine-tuning defaults come first. A saved config goes
    /// through its TOML form so that `sets` apply to it as to a preset.
    pub fn config(&self, saved: Option<&Config>, sets: &[String]) -> Result<Config> {
        let (dir, preset) = match self {
            Self::Fresh { preset } => return Config::load(preset, sets),
            Self::Init { from, preset, .. } => (from, preset),
            Self::Resume { dir, preset } => (dir, preset),
        };
        let sets: Vec<String> = match self {
            Self::Init { .. } => FINE_TUNE_SETS
                .iter()
                .map(|s| s.to_string())
                .chain(sets.iter().cloned())
                .collect(),
            _ => sets.to_vec(),
        };
        match (preset, saved) {
            (Some(p), _) => Config::load(p, &sets),
            (None, Some(saved)) => Config::from_toml_with_sets(&saved.to_toml(), &sets),
            (None, None) => {
                Config::from_toml_with_sets(&checkpoint::saved_config(dir)?.to_toml(), &sets)
            }
        }
    }

    /// What the trainer begins from. `named` is the checkpoint [`RunStart::load`] gave
    /// (loaded here where None). Where `resume_in` already holds a run of this start (an
    /// interrupted experiment run or distillation), that run is continued instead, under
    /// this start's config.
    pub fn begin(
        &self,
        named: Option<Checkpoint>,
        resume_in: Option<&Path>,
        device: &Device,
    ) -> Result<Begin> {
        if let Some(dir) = resume_in.filter(|d| d.join("latest").is_file()) {
            return Ok(Begin {
                // A run from a checkpoint keeps its tokenizer when it resumes; a fresh run
                // builds its own from the corpus again, as it did when it started.
                own_tokenizer: matches!(self, Self::Fresh { .. }),
                from: Source::Continue(checkpoint::load(dir, device)?),
            });
        }
        let named = match named {
            Some(c) => Some(c),
            None => self.load(device)?,
        };
        let from = match (self, named) {
            (Self::Init { ema, .. }, Some(c)) => Source::Weights(c.choice(*ema), c),
            (Self::Resume { .. }, Some(c)) => Source::Continue(c),
            _ => Source::Random,
        };
        Ok(Begin {
            own_tokenizer: false,
            from,
        })
    }
}

/// A run's start with its checkpoint loaded: the tokenizer for its data, then its trainer.
pub struct Begin {
    from: Source,
    /// The corpus's own tokenizer even though a checkpoint is held (a fresh run, resumed).
    own_tokenizer: bool,
}

enum Source {
    Random,
    Weights(WeightsChoice, Checkpoint),
    Continue(Checkpoint),
}

impl Begin {
    /// The tokenizer the run's data must be tokenized with: the checkpoint's, or None (the
    /// corpus's own, for a fresh run).
    pub fn tokenizer(&self) -> Result<Option<TextTokenizer>> {
        match &self.from {
            Source::Weights(_, c) | Source::Continue(c) if !self.own_tokenizer => {
                Ok(Some(TextTokenizer::from_json(&c.tokenizer_json)?))
            }
            _ => Ok(None),
        }
    }

    /// For a run from a checkpoint's weights: which weights, and the checkpoint's directory.
    pub fn weights(&self) -> Option<(WeightsChoice, &Path)> {
        match &self.from {
            Source::Weights(which, c) => Some((*which, &c.dir)),
            _ => None,
        }
    }

    /// The trainer: a random init, the chosen weights at step 0, or the resumed run.
    pub fn trainer<'a>(
        self,
        cfg: Config,
        data: &'a Prepared,
        device: &Device,
    ) -> Result<Trainer<'a>> {
        match self.from {
            Source::Random => Trainer::new(cfg, data, device),
            Source::Weights(which, c) => {
                let (_, weights) = c.pick(which == WeightsChoice::Ema)?;
                Trainer::from_checkpoint(cfg, &c, &weights, data)
            }
            Source::Continue(c) => Trainer::resume(cfg, c, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{TrainState, FORMAT_VERSION};
    use candle_core::Tensor;
    use std::collections::HashMap;

    fn sets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    /// A checkpoint in memory (no tokenizer: `begin` with a checkpoint given loads nothing).
    fn checkpoint(ema: bool) -> Checkpoint {
        let one = |v: f32| -> HashMap<String, Tensor> {
            HashMap::from([("w".into(), Tensor::new(&[v], &Device::Cpu).unwrap())])
        };
        Checkpoint {
            dir: PathBuf::from("runs/base/ckpt-00000010"),
            config: Config::load("tiny", &[]).unwrap(),
            state: TrainState {
                format_version: FORMAT_VERSION,
                step: 10,
                data_cursor: 0,
                tokens_seen: 0,
                seed: 0,
                tokenizer_hash: String::new(),
                last_val_loss: None,
                elapsed_s: 0.0,
                init_from: None,
                data_sha256: None,
            },
            tokenizer_json: String::new(),
            weights: one(1.0),
            ema: ema.then(|| one(2.0)),
            optim: None,
            quantized: None,
            device: Device::Cpu,
            extra: Default::default(),
        }
    }

    #[test]
    fn a_run_from_weights_takes_the_fine_tuning_defaults_under_the_sets() {
        let saved = Config::load("tiny", &sets(&["train.lr=1e-2"])).unwrap();
        let init = |preset: Option<&str>| RunStart::Init {
            from: "base".into(),
            preset: preset.map(String::from),
            ema: true,
        };
        let cfg = init(None).config(Some(&saved), &[]).unwrap();
        assert_eq!((cfg.train.lr, cfg.train.warmup_steps), (3e-4, 50));
        assert_eq!(cfg.model, saved.model);
        let cfg = init(None)
            .config(Some(&saved), &sets(&["train.lr=1e-3"]))
            .unwrap();
        assert_eq!((cfg.train.lr, cfg.train.warmup_steps), (1e-3, 50));
        // A named preset replaces the checkpoint's config, not the defaults.
        let cfg = init(Some("tiny")).config(Some(&saved), &[]).unwrap();
        assert_eq!((cfg.train.lr, cfg.train.warmup_steps), (3e-4, 50));
        // A resumed run keeps its saved settings; a fresh one the preset's.
        let resume = RunStart::Resume {
            dir: "run".into(),
            preset: None,
        };
        let cfg = resume.config(Some(&saved), &[]).unwrap();
        assert_eq!(cfg, saved);
        let fresh = RunStart::Fresh {
            preset: "tiny".into(),
        };
        let tiny = Config::load("tiny", &[]).unwrap();
        assert_eq!(fresh.config(None, &[]).unwrap(), tiny);
        assert_ne!(tiny.train.lr, 3e-4);
    }

    #[test]
    fn resuming_a_missing_run_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-run");
        let resume = RunStart::Resume {
            dir: missing.clone(),
            preset: None,
        };
        for err in [
            resume.load(&Device::Cpu).err().unwrap(),
            resume.config(None, &[]).err().unwrap(),
            resume.begin(None, None, &Device::Cpu).err().unwrap(),
        ] {
            let msg = format!("{err:#}");
            assert_eq!(
                msg,
                format!("checkpoint {} does not exist", missing.display())
            );
        }
    }

    #[test]
    fn the_ema_is_taken_where_kept_and_wanted() {
        let init = |ema: bool| RunStart::Init {
            from: "base".into(),
            preset: None,
            ema,
        };
        let dir = Path::new("runs/base/ckpt-00000010");
        let cases = [
            (true, true, WeightsChoice::Ema),
            (true, false, WeightsChoice::Raw),
            (false, true, WeightsChoice::Raw),
        ];
        for (kept, wanted, expected) in cases {
            let begin = init(wanted)
                .begin(Some(checkpoint(kept)), None, &Device::Cpu)
                .unwrap();
            assert_eq!(begin.weights(), Some((expected, dir)));
            let c = checkpoint(kept);
            let (which, w) = c.pick(wanted).unwrap();
            let v = w["w"].to_vec1::<f32>().unwrap()[0];
            assert_eq!(
                (which, v),
                (
                    expected,
                    if expected == WeightsChoice::Ema {
                        2.0
                    } else {
                        1.0
                    }
                )
            );
        }
        // A resumed run starts from no chosen weights: it continues all of them.
        let resume = RunStart::Resume {
            dir: "run".into(),
            preset: None,
        };
        let begin = resume
            .begin(Some(checkpoint(true)), None, &Device::Cpu)
            .unwrap();
        assert_eq!(begin.weights(), None);
        // The names reports and result.json carry.
        assert_eq!(
            serde_json::to_string(&WeightsChoice::Ema).unwrap(),
            "\"ema\""
        );
        assert_eq!(WeightsChoice::Raw.to_string(), "raw");
    }

    #[test]
    fn a_run_already_in_its_directory_is_continued_with_the_tokenizer_its_start_takes() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let doc = crate::data::Document {
            name: "d".into(),
            text: "the cat sat on the mat; the dog sat on the log. ".repeat(20),
        };
        let tok = TextTokenizer::train(&[doc], 270).unwrap();
        let mut ckpt = checkpoint(true);
        ckpt.tokenizer_json = tok.to_json().unwrap();
        checkpoint::save(&run, &ckpt).unwrap();
        let cpu = &Device::Cpu;
        // The starting checkpoint is not read again: the run in `run` is continued.
        let init = RunStart::Init {
            from: dir.path().join("no-such-base"),
            preset: None,
            ema: true,
        };
        let begin = init.begin(None, Some(&run), cpu).unwrap();
        assert_eq!(begin.weights(), None);
        let taken = begin
            .tokenizer()
            .unwrap()
            .expect("the checkpoint's tokenizer");
        assert_eq!(taken.hash(), tok.hash());
        // A fresh run builds its tokenizer from the corpus again, resumed or not.
        let fresh = RunStart::Fresh {
            preset: "tiny".into(),
        };
        let begin = fresh.begin(None, Some(&run), cpu).unwrap();
        assert!(matches!(begin.from, Source::Continue(_)));
        assert!(begin.tokenizer().unwrap().is_none());
        let empty = dir.path().join("empty");
        let begin = fresh.begin(None, Some(&empty), cpu).unwrap();
        assert!(matches!(begin.from, Source::Random));
        // `--resume` reads the run it names.
        let resume = RunStart::Resume {
            dir: run.clone(),
            preset: None,
        };
        let begin = resume.begin(None, None, cpu).unwrap();
        assert!(matches!(begin.from, Source::Continue(_)));
        assert!(begin.tokenizer().unwrap().is_some());
    }
}
