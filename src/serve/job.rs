//! A job as the scheduler takes it in and what it sends back: the validated request
//! (`JobSpec`, batched with others of equal `DecodeSettings`) and its `Event`s, with the
//! per-step views and the final result they carry.

use crate::decode::{DecoderSpec, Sampling};
use serde::Serialize;

/// Requests batch together only when these are equal.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeSettings {
    /// AR or CARD (the decoders the server offers).
    pub decoder: DecoderSpec,
    pub sampling: Sampling,
    /// Keep generating past `<|endoftext|>` (vLLM's `ignore_eos`): fixed-length benchmarks.
    pub ignore_eos: bool,
}

/// One request, already validated and tokenized: one row per (prompt, choice).
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub prompts: Vec<Vec<u32>>,
    pub max_tokens: usize,
    pub stops: Vec<String>,
    pub settings: DecodeSettings,
    /// A sampled request with a seed runs alone, so its draws do not depend on neighbours.
    pub seed: Option<u64>,
    /// Send `Event::Delta` as text is committed.
    pub stream: bool,
    /// Send `Event::Step` for every decoding step (the playground).
    pub trace: bool,
}

impl JobSpec {
    pub(crate) fn rows(&self) -> usize {
        self.prompts.len()
    }

    pub(crate) fn alone(&self) -> bool {
        self.seed.is_some() && !self.settings.sampling.is_greedy()
    }
}

#[derive(Debug)]
pub enum Event {
    /// Newly committed text of the request's row `row`.
    Delta {
        row: usize,
        text: String,
    },
    Step(Box<StepView>),
    Done(JobResult),
    /// The job ended without a result; `cancelled` when the server shut it down.
    Failed {
        message: String,
        cancelled: bool,
    },
}

/// One slot of a traced step, with its text.
#[derive(Debug, Clone, Serialize)]
pub struct SlotView {
    pub pos: usize,
    pub token: u32,
    pub text: String,
    pub confidence: f32,
    pub masked: bool,
    /// The verifier: "mask" or "lookup" for a draft it checked; absent for AR's own token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// The verifier: the draft stood on an alternative branch of a draft tree (absent when
    /// it stood on the main chain or was no draft).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub branch: bool,
}

/// A decoding step of one row, as the playground shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub row: usize,
    pub forward: usize,
    pub step: usize,
    /// Forward passes this row has taken part in so far.
    pub row_forwards: usize,
    pub slots: Vec<SlotView>,
    pub committed: Vec<SlotView>,
    /// Drafts the lossless decoder checked and rejected in this step.
    pub rejected: Vec<SlotView>,
    /// The left-contiguous committed text so far and its token count.
    pub text: String,
    pub tokens: usize,
    pub elapsed_s: f64,
    /// Rows decoded together in this batch (other requests included).
    pub batch_rows: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub text: String,
    pub tokens: usize,
    pub forward_passes: usize,
    /// "stop" (end of text or a stop string) or "length".
    pub finish: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub rows: Vec<RowResult>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Batched forward passes this request needed (the most any of its rows took part in).
    pub forward_passes: usize,
    /// Mean over the request's rows of generated tokens per forward pass.
    pub tokens_per_forward: f64,
    pub elapsed_s: f64,
    pub batch_rows: usize,
    pub decoder: &'static str,
}
