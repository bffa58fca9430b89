//! One decoder specification for every caller (CLI, evaluation, training's sample, the
//! server, benchmarks, experiments): parse a decoder name and its settings, validate them,
//! pick the default for a checkpoint, say which decoders fit an objective, and decode.

use super::{
    ArDecoder, Bd3lmDecoder, CardDecoder, CommitMode, Decoder, Floor, GenOptions, Generation,
    MdlmDecoder, Reveal, StepTrace, VerifyDecoder,
};
use crate::config::{Config, ObjectiveKind};
use crate::model::Transformer;
use anyhow::{bail, Result};

/// A decoder with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum DecoderSpec {
    Ar,
    Card(CardDecoder),
    /// CARD's drafts verified by the model itself: AR's output, fewer passes.
    Verify(VerifyDecoder),
    Mdlm(MdlmDecoder),
    Bd3lm(Bd3lmDecoder),
}

/// Settings a command line or a request may give; None keeps the decoder's default.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    pub block_size: Option<usize>,
    pub step_limit: Option<usize>,
    pub threshold: Option<f64>,
    pub floor: Option<Floor>,
    pub commit: Option<CommitMode>,
    /// MDLM: denoising steps over the canvas; BD3LM: steps per block.
    pub steps: Option<usize>,
    pub reveal: Option<Reveal>,
}

impl DecoderSpec {
    pub const NAMES: [&'static str; 5] = ["ar", "card", "verify", "mdlm", "bd3lm"];

    /// The decoder `name` with `knobs` over its defaults, validated; BD3LM's block size is the
    /// checkpoint's (`cfg`).
    pub fn parse(name: &str, knobs: &Knobs, cfg: &Config) -> Result<Self> {
        if let Some(t) = knobs.threshold {
            if !(0.0..=1.0).contains(&t) {
                bail!("threshold τ must be in [0, 1], got {t}");
            }
        }
        if knobs.steps == Some(0) {
            bail!("steps must be at least 1");
        }
        let spec = match name {
            "ar" => Self::Ar,
            "card" => {
                let d = CardDecoder::default();
                Self::Card(CardDecoder {
                    block_size: knobs.block_size.unwrap_or(d.block_size),
                    step_limit: knobs.step_limit.unwrap_or(d.step_limit),
                    threshold: knobs.threshold.unwrap_or(d.threshold),
                    floor: knobs.floor.unwrap_or(d.floor),
                    commit: knobs.commit.unwrap_or(d.commit),
                })
            }
            "verify" => Self::Verify(VerifyDecoder {
                block_size: knobs
                    .block_size
                    .unwrap_or(VerifyDecoder::default().block_size),
            }),
            "mdlm" => Self::Mdlm(MdlmDecoder {
                steps: knobs.steps.unwrap_or(0),
            }),
            "bd3lm" => {
                let d = Bd3lmDecoder::default();
                Self::Bd3lm(Bd3lmDecoder {
                    block_size: cfg.bd3lm.block_size,
                    steps: knobs.steps.unwrap_or(0),
                    reveal: knobs.reveal.unwrap_or(d.reveal),
                    threshold: knobs.threshold.unwrap_or(d.threshold),
                })
            }
            other => bail!(
                "unknown decoder '{other}' (known: {})",
                Self::NAMES.join(", ")
            ),
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Card(c) => c.validate(),
            Self::Verify(v) => v.validate(),
            Self::Bd3lm(b) => b.validate(),
            Self::Ar | Self::Mdlm(_) => Ok(()),
        }
    }

    /// A checkpoint's own decoder: AR for ARM and CARD (exact greedy decoding), the
    /// samplers of MDLM and BD3LM (at the checkpoint's block size).
    pub fn default_for(cfg: &Config) -> Self {
        match cfg.train.objective {
            ObjectiveKind::Arm | ObjectiveKind::Card => Self::Ar,
            ObjectiveKind::Mdlm => Self::Mdlm(MdlmDecoder::default()),
            ObjectiveKind::Bd3lm => Self::Bd3lm(Bd3lmDecoder {
                block_size: cfg.bd3lm.block_size,
                ..Bd3lmDecoder::default()
            }),
        }
    }

    /// Names of the decoders that can run checkpoints of `objective`.
    pub fn fitting(objective: ObjectiveKind) -> Vec<&'static str> {
        let all = [
            Self::Ar,
            Self::Card(CardDecoder::default()),
            Self::Verify(VerifyDecoder::default()),
            Self::Mdlm(MdlmDecoder::default()),
            Self::Bd3lm(Bd3lmDecoder::default()),
        ];
        all.iter()
            .filter(|d| d.fits(objective))
            .map(|d| d.name())
            .collect()
    }

    /// Refuse a checkpoint this decoder cannot run, naming the decoders that fit.
    pub fn check_fits(&self, objective: ObjectiveKind) -> Result<()> {
        if !self.fits(objective) {
            bail!(
                "a {} checkpoint cannot be decoded with the {} decoder; decoders that fit: {}",
                objective.name(),
                self.name(),
                Self::fitting(objective).join(", ")
            );
        }
        Ok(())
    }

    fn decoder(&self) -> &dyn Decoder {
        match self {
            Self::Ar => &ArDecoder,
            Self::Card(d) => d,
            Self::Verify(d) => d,
            Self::Mdlm(d) => d,
            Self::Bd3lm(d) => d,
        }
    }
}

impl Decoder for DecoderSpec {
    fn name(&self) -> &'static str {
        self.decoder().name()
    }

    fn fits(&self, objective: ObjectiveKind) -> bool {
        self.decoder().fits(objective)
    }

    fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        on_step: &mut dyn FnMut(&StepTrace),
    ) -> Result<Generation> {
        self.decoder().generate(model, prompts, opts, on_step)
    }
}

impl CardDecoder {
    /// A "K:T_max:τ" setting (benchmark grids), e.g. `8:8:0.9`.
    pub fn from_setting(s: &str) -> Result<Self> {
        let bad = || anyhow::anyhow!("setting '{s}' must look like K:T_max:τ, e.g. 8:8:0.9");
        let parts: Vec<&str> = s.split(':').collect();
        let [k, t, tau] = parts.as_slice() else {
            return Err(bad());
        };
        let d = CardDecoder {
            block_size: k.parse().map_err(|_| bad())?,
            step_limit: t.parse().map_err(|_| bad())?,
            threshold: tau.parse().map_err(|_| bad())?,
            ..CardDecoder::default()
        };
        d.validate()?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_validates_and_defaults_per_objective() {
        let mut cfg = Config::default();
        let knobs = Knobs {
            block_size: Some(4),
            ..Knobs::default()
        };
        let DecoderSpec::Card(c) = DecoderSpec::parse("card", &knobs, &cfg).unwrap() else {
            panic!("a CARD decoder");
        };
        assert_eq!(
            (c.block_size, c.step_limit),
            (4, CardDecoder::default().step_limit)
        );
        let bad = Knobs {
            threshold: Some(1.5),
            ..Knobs::default()
        };
        assert!(DecoderSpec::parse("card", &bad, &cfg).is_err());
        assert!(DecoderSpec::parse("magic", &Knobs::default(), &cfg).is_err());
        cfg.bd3lm.block_size = 16;
        cfg.train.objective = ObjectiveKind::Bd3lm;
        let d = DecoderSpec::default_for(&cfg);
        assert!(matches!(d, DecoderSpec::Bd3lm(b) if b.block_size == 16));
        assert_eq!(
            DecoderSpec::fitting(ObjectiveKind::Card),
            ["ar", "card", "verify"]
        );
        let err = DecoderSpec::Ar.check_fits(ObjectiveKind::Mdlm).unwrap_err();
        assert!(err.to_string().contains("decoders that fit: mdlm"), "{err}");
        assert!(CardDecoder::from_setting("4:4:0.5").is_ok());
        assert!(CardDecoder::from_setting("4:4").is_err());
        assert!(CardDecoder::from_setting("0:4:0.5").is_err());
    }
}
