//! MDLM ancestral sampling: the prompt followed by a canvas of max_new_tokens `[MASK]`s is
//! denoised over T steps under bidirectional attention, without a KV cache. Going from
//! t = k/T to s = (k−1)/T under the linear schedule, each still-masked slot is revealed with
//! probability (t − s)/t = 1/k, as a token drawn from the model's x_0 prediction (SUBS:
//! never `[MASK]`); revealed slots never change again. The model has no time input, so a
//! step that revealed nothing leaves the next forward's input unchanged: that forward is
//! skipped and its predictions reused.

use super::{logits_at, Decoder, GenOptions, Generation, Progress, SlotTrace, Start, StepTrace};
use crate::config::ObjectiveKind;
use crate::model::{padded, Attention, Transformer};
use anyhow::Result;
use candle_core::Tensor;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MdlmDecoder {
    /// T: denoising steps over the whole canvas (0 = one per generated token).
    pub steps: usize,
}

/// One masked-or-revealed slot of a diffusion canvas.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub token: Option<u32>,
    pub cand: u32,
    pub conf: f32,
}

impl Slot {
    pub fn masked() -> Self {
        Self {
            token: None,
            cand: 0,
            conf: 0.0,
        }
    }

    pub fn trace(&self, pos: usize) -> SlotTrace {
        SlotTrace::new(
            pos,
            self.token.unwrap_or(self.cand),
            self.conf,
            self.token.is_none(),
        )
    }
}

/// Ancestral reveal at step `step` (1-based) of `steps`: each masked slot independently with
/// probability 1/(steps − step + 1), so the last step reveals everything left.
pub(crate) fn ancestral_reveal(
    slots: &[Slot],
    step: usize,
    steps: usize,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let remaining = steps.saturating_sub(step) + 1;
    let p = 1.0 / remaining as f64;
    (0..slots.len())
        .filter(|&j| slots[j].token.is_none())
        .filter(|_| remaining == 1 || rng.random::<f64>() < p)
        .collect()
}

/// Logits [rows, T, V] (f32) of the given canvases under bidirectional attention; rows of
/// different lengths are padded and attend only to their own real tokens.
pub(crate) fn bidirectional_logits(
    model: &Transformer,
    canvases: &[Vec<u32>],
    pad: u32,
) -> Result<Tensor> {
    let (ids, valid) = padded(canvases, pad, model.device())?;
    Ok(model.forward_padded(&ids, &valid, Attention::Bidirectional, None)?)
}

struct Row {
    slots: Vec<Slot>,
    /// The left-contiguous revealed tokens accepted so far.
    progress: Progress,
    /// The slots changed since the predictions in `slots` were made.
    stale: bool,
}

/// Accept the newly left-contiguous revealed slots (the canvas holds exactly the budget).
fn accept_prefix(r: usize, row: &mut Row, opts: &GenOptions) {
    while !row.progress.done {
        let Some(tok) = row.slots[row.progress.tokens.len()].token else {
            return;
        };
        row.progress.push(r, tok, opts);
    }
}

impl Decoder for MdlmDecoder {
    fn name(&self) -> &'static str {
        "mdlm"
    }

    fn fits(&self, objective: ObjectiveKind) -> bool {
        objective == ObjectiveKind::Mdlm
    }

    fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        on_step: &mut dyn FnMut(&StepTrace),
    ) -> Result<Generation> {
        let Start {
            clock: start,
            mut rngs,
            ..
        } = Start::new(model, prompts, opts)?;
        let n = opts.max_new_tokens;
        let steps = if self.steps == 0 { n } else { self.steps };
        let mut rows: Vec<Row> = prompts
            .iter()
            .map(|_| Row {
                slots: vec![Slot::masked(); n],
                progress: Progress::new(opts),
                stale: true,
            })
            .collect();
        let mut forwards = 0;
        let mut fed = 0;
        for step in 1..=steps.max(1) {
            if rows.iter().all(|r| r.progress.done) {
                break;
            }
            // Refresh the predictions of the rows whose canvas changed.
            let fresh: Vec<usize> = (0..rows.len())
                .filter(|&r| !rows[r].progress.done && rows[r].stale)
                .collect();
            if !fresh.is_empty() {
                let canvases: Vec<Vec<u32>> = fresh
                    .iter()
                    .map(|&r| {
                        let gen = rows[r]
                            .slots
                            .iter()
                            .map(|s| s.token.unwrap_or(opts.mask_id));
                        prompts[r].iter().copied().chain(gen).collect()
                    })
                    .collect();
                fed += canvases.iter().map(|c| c.len()).sum::<usize>();
                let logits = bidirectional_logits(model, &canvases, opts.mask_id)?;
                forwards += 1;
                for (i, &r) in fresh.iter().enumerate() {
                    let p = prompts[r].len();
                    let row = &mut rows[r];
                    row.progress.forwards += 1;
                    row.stale = false;
                    for j in 0..n {
                        if row.slots[j].token.is_some() {
                            continue;
                        }
                        let l = logits_at(&logits, i, p + j)?;
                        let context = [prompts[r].as_slice(), row.progress.tokens.as_slice()];
                        let (cand, conf) =
                            opts.sampling
                                .pick(&l, &context, &[opts.mask_id], &mut rngs[r]);
                        (row.slots[j].cand, row.slots[j].conf) = (cand, conf);
                    }
                }
            }
            for (r, row) in rows.iter_mut().enumerate() {
                if row.progress.done {
                    continue;
                }
                let chosen = ancestral_reveal(&row.slots, step, steps, &mut rngs[r]);
                for &j in &chosen {
                    row.slots[j].token = Some(row.slots[j].cand);
                }
                row.stale = !chosen.is_empty();
                on_step(&StepTrace {
                    row: r,
                    forward: forwards,
                    step,
                    slots: row
                        .slots
                        .iter()
                        .enumerate()
                        .map(|(j, s)| s.trace(j))
                        .collect(),
                    committed: chosen.iter().map(|&j| row.slots[j].trace(j)).collect(),
                    rejected: Vec::new(),
                });
                accept_prefix(r, row, opts);
            }
        }
        let rows = rows.into_iter().map(|r| r.progress).collect();
        Ok(Generation::from_rows(rows, forwards, fed, prompts, start))
    }
}
