//! One decoder specification for every caller (CLI, evaluation, training's sample, the
//! server, benchmarks, experiments): parse a decoder name and its settings, validate them,
//! pick the default for a checkpoint, say which decoders fit an objective, and decode.

use super::verify::DEFAULT_LOOKUP;
use super::{
    ArDecoder, Bd3lmDecoder, CardDecoder, CommitMode, Decoder, Floor, GenOptions, Generation,
    MdlmDecoder, Reveal, StepTrace, VerifyDecoder,
};
use crate::config::{Choice, Config, ObjectiveKind};
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
    /// Verify: the most drafts prompt lookup proposes per pass.
    pub lookup: Option<usize>,
    /// Verify: the budget's extra cost of a position (None: measured as it decodes).
    pub cost: Option<f64>,
    /// Verify: the most alternative positions of a draft tree (0: a chain).
    pub tree: Option<usize>,
}

impl DecoderSpec {
    pub const NAMES: [&'static str; 5] = ["ar", "card", "verify", "mdlm", "bd3lm"];

    /// The decoder `name` with `knobs` over its defaults, validated; BD3LM's block size is the
    /// checkpoint's (`cfg`).
    pub fn parse(name: &str, knobs: &Knobs, cfg: &Config) -> Result<Self> {
        // The verifier on a causal model other than CARD has no [MASK] slots to draft from:
        // unless told otherwise it drafts by lookup alone.
        if name == "verify" && cfg.train.objective != ObjectiveKind::Card {
            let mut knobs = knobs.clone();
            knobs.block_size = knobs.block_size.or(Some(0));
            return Self::build(name, &knobs, cfg.bd3lm.block_size);
        }
        Self::build(name, knobs, cfg.bd3lm.block_size)
    }

    /// The decoder `name` with `knobs` over its defaults, validated; BD3LM at block size
    /// `bd3lm_block`.
    fn build(name: &str, knobs: &Knobs, bd3lm_block: usize) -> Result<Self> {
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
                lookup: knobs.lookup.unwrap_or(VerifyDecoder::default().lookup),
                cost: knobs.cost,
                tree: knobs.tree.unwrap_or(VerifyDecoder::default().tree),
            }),
            "mdlm" => Self::Mdlm(MdlmDecoder {
                steps: knobs.steps.unwrap_or(0),
            }),
            "bd3lm" => {
                let d = Bd3lmDecoder::default();
                Self::Bd3lm(Bd3lmDecoder {
                    block_size: bd3lm_block,
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
            // Lookup alone: the verifier for any causal model.
            Self::Verify(VerifyDecoder::with_lookup(0, DEFAULT_LOOKUP)),
            Self::Mdlm(MdlmDecoder::default()),
            Self::Bd3lm(Bd3lmDecoder::default()),
        ];
        let mut names: Vec<&'static str> = all
            .iter()
            .filter(|d| d.fits(objective))
            .map(|d| d.name())
            .collect();
        names.dedup();
        names
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

    /// The settings in words, the benchmark's `setting` column: "K=8 T=8 τ=0.9" (a floor or
    /// commit mode other than the default after it), "K=2", "steps=64"; "-" when there are
    /// none. A setting left at its default that the words would not show is omitted.
    pub fn setting(&self) -> String {
        let mut words = Vec::new();
        match self {
            Self::Ar => {}
            Self::Card(c) => {
                let d = CardDecoder::default();
                words.push(format!(
                    "K={} T={} τ={}",
                    c.block_size, c.step_limit, c.threshold
                ));
                if c.floor != d.floor {
                    words.push(format!("floor={}", c.floor.name()));
                }
                if c.commit != d.commit {
                    words.push(format!("commit={}", c.commit.name()));
                }
            }
            Self::Verify(v) => {
                words.push(format!("K={} L={}", v.block_size, v.lookup));
                if let Some(c) = v.cost {
                    words.push(format!("cost={c}"));
                }
                if v.tree > 0 {
                    words.push(format!("tree={}", v.tree));
                }
            }
            // Steps 0: the default (one per new token, one per block slot).
            Self::Mdlm(m) if m.steps > 0 => words.push(format!("steps={}", m.steps)),
            Self::Mdlm(_) => {}
            Self::Bd3lm(b) => {
                let d = Bd3lmDecoder::default();
                words.push(format!("K={}", b.block_size));
                if b.steps > 0 {
                    words.push(format!("steps={}", b.steps));
                }
                if b.reveal != d.reveal {
                    words.push(format!("reveal={}", b.reveal.name()));
                }
                if b.threshold != d.threshold {
                    words.push(format!("τ={}", b.threshold));
                }
            }
        }
        if words.is_empty() {
            "-".into()
        } else {
            words.join(" ")
        }
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

/// The label "card K=8 T=8 τ=0.9", "verify K=2 L=8", "verify K=0 L=8", "ar": the name, then
/// [`DecoderSpec::setting`].
impl std::fmt::Display for DecoderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ar => f.write_str(self.name()),
            _ => write!(f, "{} {}", self.name(), self.setting()),
        }
    }
}

/// The inverse of `Display`: a label back to its decoder.
impl std::str::FromStr for DecoderSpec {
    type Err = anyhow::Error;

    fn from_str(label: &str) -> Result<Self> {
        let mut words = label.split_whitespace();
        let name = words.next().unwrap_or_default();
        let bad = |w: &str| anyhow::anyhow!("decoder label '{label}': cannot read '{w}'");
        let mut knobs = Knobs::default();
        for w in words.filter(|w| *w != "-") {
            let (key, value) = w.split_once('=').ok_or_else(|| bad(w))?;
            match key {
                "K" => knobs.block_size = Some(value.parse().map_err(|_| bad(w))?),
                "T" => knobs.step_limit = Some(value.parse().map_err(|_| bad(w))?),
                "τ" => knobs.threshold = Some(value.parse().map_err(|_| bad(w))?),
                "steps" => knobs.steps = Some(value.parse().map_err(|_| bad(w))?),
                "L" => knobs.lookup = Some(value.parse().map_err(|_| bad(w))?),
                "cost" => knobs.cost = Some(value.parse().map_err(|_| bad(w))?),
                "tree" => knobs.tree = Some(value.parse().map_err(|_| bad(w))?),
                "floor" => knobs.floor = Some(Floor::from_name(value).ok_or_else(|| bad(w))?),
                "commit" => {
                    knobs.commit = Some(CommitMode::from_name(value).ok_or_else(|| bad(w))?)
                }
                "reveal" => knobs.reveal = Some(Reveal::from_name(value).ok_or_else(|| bad(w))?),
                _ => return Err(bad(w)),
            }
        }
        let bd3lm_block = knobs
            .block_size
            .unwrap_or(Bd3lmDecoder::default().block_size);
        Self::build(name, &knobs, bd3lm_block)
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
        // An ARM checkpoint: the verifier by lookup alone, unless told otherwise.
        assert_eq!(DecoderSpec::fitting(ObjectiveKind::Arm), ["ar", "verify"]);
        cfg.train.objective = ObjectiveKind::Arm;
        let v = DecoderSpec::parse("verify", &Knobs::default(), &cfg).unwrap();
        assert_eq!(
            v,
            DecoderSpec::Verify(VerifyDecoder::with_lookup(0, DEFAULT_LOOKUP))
        );
        assert!(v.fits(ObjectiveKind::Arm));
        let masks = DecoderSpec::parse("verify", &knobs, &cfg).unwrap();
        assert!(!masks.fits(ObjectiveKind::Arm), "K = 4 asked for");
        cfg.train.objective = ObjectiveKind::Card;
        let v = DecoderSpec::parse("verify", &Knobs::default(), &cfg).unwrap();
        assert_eq!(v, DecoderSpec::Verify(VerifyDecoder::default()));
        let err = DecoderSpec::Ar.check_fits(ObjectiveKind::Mdlm).unwrap_err();
        assert!(err.to_string().contains("decoders that fit: mdlm"), "{err}");
        assert!(CardDecoder::from_setting("4:4:0.5").is_ok());
        assert!(CardDecoder::from_setting("4:4").is_err());
        assert!(CardDecoder::from_setting("0:4:0.5").is_err());
    }

    #[test]
    fn every_label_parses_back_to_its_decoder() {
        let card = CardDecoder::default();
        let bd3lm = Bd3lmDecoder::default();
        let specs = [
            DecoderSpec::Ar,
            DecoderSpec::Card(card.clone()),
            DecoderSpec::Card(CardDecoder {
                block_size: 4,
                step_limit: 2,
                threshold: 0.7,
                floor: Floor::MostConfident,
                commit: CommitMode::Sliding,
            }),
            DecoderSpec::Verify(VerifyDecoder::masks(1)),
            DecoderSpec::Verify(VerifyDecoder::default()),
            DecoderSpec::Verify(VerifyDecoder::with_lookup(0, 8)),
            DecoderSpec::Verify(VerifyDecoder::with_lookup(2, 4)),
            DecoderSpec::Verify(VerifyDecoder {
                cost: Some(0.15),
                ..VerifyDecoder::with_lookup(2, 4)
            }),
            DecoderSpec::Verify(VerifyDecoder {
                tree: 4,
                ..VerifyDecoder::with_lookup(2, 8)
            }),
            DecoderSpec::Mdlm(MdlmDecoder { steps: 0 }),
            DecoderSpec::Mdlm(MdlmDecoder { steps: 64 }),
            DecoderSpec::Bd3lm(bd3lm.clone()),
            DecoderSpec::Bd3lm(Bd3lmDecoder {
                block_size: 16,
                steps: 4,
                reveal: Reveal::Confidence,
                threshold: 0.75,
            }),
        ];
        for spec in specs {
            let label = spec.to_string();
            assert_eq!(label.parse::<DecoderSpec>().unwrap(), spec, "{label}");
        }
        // The benchmark's setting column, as its tables and kept rows have it.
        assert_eq!(DecoderSpec::Ar.setting(), "-");
        assert_eq!(DecoderSpec::Ar.to_string(), "ar");
        let card = DecoderSpec::Card(CardDecoder {
            block_size: 4,
            step_limit: 4,
            threshold: 0.9,
            ..card
        });
        assert_eq!(card.setting(), "K=4 T=4 τ=0.9");
        assert_eq!(card.to_string(), "card K=4 T=4 τ=0.9");
        assert_eq!(
            DecoderSpec::Verify(VerifyDecoder::default()).setting(),
            "K=2 L=8"
        );
        assert!("card K=x".parse::<DecoderSpec>().is_err());
        assert!("card size=4".parse::<DecoderSpec>().is_err());
        assert!("magic".parse::<DecoderSpec>().is_err());
    }
}
