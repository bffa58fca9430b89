//! Decoders are strategies over the same model and KV cache: autoregressive, CARD's
//! confidence-based dynamic parallel decoding, and the diffusion baselines' samplers (MDLM,
//! BD3LM). All keep a row's progress the same way ([`Progress`]), report the same statistics
//! and emit the same per-step trace, which the CLI, the benchmarks and the playground read.
//! [`DecoderSpec`] is how every caller names and builds one; [`text`] turns committed
//! tokens into streamed text.
//! The causal ones (AR, CARD, the verifier) share one decoding window (`window.rs`): per
//! row the committed tokens not yet cached, then drafts and `[MASK]` slots.

pub mod ar;
pub mod bd3lm;
pub mod budget;
pub mod card;
pub mod lookup;
pub mod mdlm;
mod progress;
pub mod sampling;
pub mod spec;
pub mod text;
mod tree;
pub mod verify;
mod window;

use crate::config::ObjectiveKind;
use crate::data::TextTokenizer;
use crate::model::{Backend, Session, Transformer};
use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::Serialize;
use std::time::Instant;

pub use ar::ArDecoder;
pub use bd3lm::{Bd3lmDecoder, Reveal};
pub use card::{CardDecoder, CommitMode, Floor};
pub use mdlm::MdlmDecoder;
pub use progress::Progress;
pub use sampling::Sampling;
pub use spec::{DecoderSpec, Knobs};
pub use verify::VerifyDecoder;

/// Called with (row index, the row's generated tokens) after each commit; true stops the row.
pub type StopFn<'a> = &'a dyn Fn(usize, &[u32]) -> bool;

/// What every decoder needs besides the model and the prompts.
pub struct GenOptions<'a> {
    pub max_new_tokens: usize,
    pub eos_id: u32,
    pub mask_id: u32,
    pub sampling: Sampling,
    pub seed: u64,
    pub stop: Option<StopFn<'a>>,
    /// The causal decoders' backend (None: `Backend::for_model`).
    pub backend: Option<Backend>,
}

impl GenOptions<'_> {
    /// Greedy decoding of `max_new_tokens` with the tokenizer's special ids, seed 0.
    pub fn new(max_new_tokens: usize, tok: &TextTokenizer) -> Self {
        Self {
            max_new_tokens,
            eos_id: tok.eot_id(),
            mask_id: tok.mask_id(),
            sampling: Sampling::default(),
            seed: 0,
            stop: None,
            backend: None,
        }
    }

    pub(crate) fn backend_for(&self, model: &Transformer) -> Backend {
        self.backend.unwrap_or_else(|| Backend::for_model(model))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// Generated `<|endoftext|>` (not included in the tokens).
    Eos,
    /// A stop condition matched.
    Stop,
    /// Reached max_new_tokens.
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct RowOutput {
    /// Generated tokens, prompt excluded, truncated before `<|endoftext|>`.
    pub tokens: Vec<u32>,
    /// Forward passes this row took part in while still generating.
    pub forward_passes: usize,
    pub finish: Finish,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub rows: Vec<RowOutput>,
    /// Batched forward passes run.
    pub forward_passes: usize,
    pub elapsed_s: f64,
    /// Positions run through the model that predict generated text (each prompt's last one
    /// and everything after it): every drafted, masked or recomputed position counts, kept
    /// or not.
    pub computed_tokens: usize,
}

impl Generation {
    /// The result of rows that ran `forward_passes` batched passes since `start`, feeding
    /// `fed` positions in all (the prompts' own but each one's last are not counted as
    /// computed: they predict no generated token).
    pub(crate) fn from_rows(
        rows: Vec<Progress>,
        forward_passes: usize,
        fed: usize,
        prompts: &[Vec<u32>],
        start: Instant,
    ) -> Self {
        let prompt: usize = prompts.iter().map(|p| p.len().saturating_sub(1)).sum();
        Self {
            rows: rows.into_iter().map(Progress::output).collect(),
            forward_passes,
            elapsed_s: start.elapsed().as_secs_f64(),
            computed_tokens: fed.saturating_sub(prompt),
        }
    }

    /// Generated tokens kept per position computed after the prompts (1 for AR; below 1
    /// when a decoder computes positions it throws away).
    pub fn kept_fraction(&self) -> f64 {
        self.generated_tokens() as f64 / self.computed_tokens.max(1) as f64
    }

    pub fn generated_tokens(&self) -> usize {
        self.rows.iter().map(|r| r.tokens.len()).sum()
    }

    /// Mean over rows of generated tokens per forward pass.
    pub fn tokens_per_forward(&self) -> f64 {
        let n = self.rows.len().max(1) as f64;
        self.rows
            .iter()
            .map(|r| r.tokens.len() as f64 / r.forward_passes.max(1) as f64)
            .sum::<f64>()
            / n
    }

    /// Generated tokens (prompt excluded) per second of wall time.
    pub fn tokens_per_s(&self) -> f64 {
        self.generated_tokens() as f64 / self.elapsed_s.max(1e-9)
    }
}

/// One slot of a decoding window after a step.
#[derive(Debug, Clone, Serialize)]
pub struct SlotTrace {
    /// Index in the generated sequence (0 = first generated token).
    pub pos: usize,
    /// The committed token, or the current top candidate of a still-masked slot.
    pub token: u32,
    pub confidence: f32,
    pub masked: bool,
    /// The verifier: what drafted this slot's token, for a draft it checked (accepted or
    /// rejected); None for AR's own token and the other decoders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<DraftSource>,
    /// The verifier: the draft stood on a branch of a draft tree, an alternative to the
    /// pass's main chain.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub branch: bool,
}

/// Where the verifier's drafts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DraftSource {
    /// A `[MASK]` slot of the previous pass (CARD's parallel prediction).
    Mask,
    /// Prompt lookup: copied from the text so far.
    Lookup,
}

impl DraftSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mask => "mask",
            Self::Lookup => "lookup",
        }
    }
}

/// What one row did in one forward pass.
#[derive(Debug, Clone, Serialize)]
pub struct StepTrace {
    pub row: usize,
    /// 1-based index of the batched forward pass.
    pub forward: usize,
    /// Step within the current block (1-based).
    pub step: usize,
    /// The window after this step.
    pub slots: Vec<SlotTrace>,
    /// Slots committed in this step.
    pub committed: Vec<SlotTrace>,
    /// Drafts checked and rejected in this step (the lossless decoder; empty elsewhere).
    pub rejected: Vec<SlotTrace>,
}

pub trait Decoder {
    fn name(&self) -> &'static str;

    /// Objectives whose checkpoints this decoder can run.
    fn fits(&self, objective: ObjectiveKind) -> bool;

    fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        on_step: &mut dyn FnMut(&StepTrace),
    ) -> Result<Generation>;
}

/// Refuse prompts that cannot fit: each prompt must be non-empty and leave room for
/// max_new_tokens in the model's context.
pub fn check_budget(model: &Transformer, prompts: &[Vec<u32>], max_new: usize) -> Result<()> {
    if prompts.is_empty() {
        bail!("no prompts given");
    }
    let ctx = model.cfg.max_seq_len;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {i} is empty (start it with <|endoftext|>)");
        }
        if p.len() + max_new > ctx {
            bail!(
                "prompt {i} has {} tokens; with max_new_tokens {max_new} that exceeds the model's context of {ctx} (use a shorter prompt, fewer new tokens, or --truncate-prompt left)",
                p.len()
            );
        }
    }
    Ok(())
}

/// The logits of one row at one position, on the host (a copy: for the samplers that keep
/// few positions).
pub(crate) fn logits_at(logits: &Tensor, row: usize, pos: usize) -> Result<Vec<f32>> {
    let l = logits.get(row)?.get(pos)?.to_vec1::<f32>()?;
    if !l.iter().all(|x| x.is_finite()) {
        bail!(crate::model::session::NON_FINITE);
    }
    Ok(l)
}

/// What every decoder does before its first pass: refuse prompts that cannot fit, start the
/// clock, and give each row its own sampling RNG (so a row's draws do not depend on its
/// batch neighbours).
pub(crate) struct Start {
    pub clock: Instant,
    /// The longest prompt.
    pub longest: usize,
    pub rngs: Vec<rand_pcg::Pcg64>,
}

impl Start {
    pub fn new(model: &Transformer, prompts: &[Vec<u32>], opts: &GenOptions) -> Result<Self> {
        check_budget(model, prompts, opts.max_new_tokens)?;
        Ok(Self {
            clock: Instant::now(),
            longest: prompts.iter().map(|p| p.len()).max().unwrap_or(0),
            rngs: (0..prompts.len()).map(|r| row_rng(opts.seed, r)).collect(),
        })
    }

    /// The causal decoders' cached model for `batch` rows: room for the longest prompt and
    /// the new tokens, plus `window` scratch positions past the longest prompt on candle's
    /// backend (a padded draft window).
    pub fn session<'m>(
        &self,
        model: &'m Transformer,
        opts: &GenOptions,
        batch: usize,
        window: usize,
    ) -> Result<Session<'m>> {
        let positions = self.longest + opts.max_new_tokens;
        let backend = opts.backend_for(model);
        Session::new(
            model,
            backend,
            batch,
            positions,
            self.longest + window,
            // Padding is never read: any id in the vocabulary (EOS may be disabled as u32::MAX).
            opts.mask_id,
        )
    }
}

/// Per-row RNG for sampling.
pub(crate) fn row_rng(seed: u64, row: usize) -> rand_pcg::Pcg64 {
    crate::runtime::rng::rng(seed, crate::runtime::rng::Stream::Sampling, row as u64)
}
