//! BD3LM sampling: block by block, each block denoised over T steps while the committed
//! blocks sit in an exact KV cache.
//!
//! Blocks are aligned to absolute positions (multiples of B' from the prompt's first token),
//! as in training. A prompt's complete blocks are clean context; its last, partial block is
//! the first block to denoise, its prompt tokens fixed (the unmasked part of a noised block).
//! One forward runs, per row, the clean tokens not yet cached (a just-finished block, or the
//! prompt's complete blocks at first) followed by the current block, under the block-causal
//! mask over absolute positions — a clean token sees clean blocks up to its own, a noised
//! one the clean blocks before it and its own block, which is exactly what training's x_0
//! and x_t halves see. The clean part's keys/values stay in the cache; the block's are
//! scratch, rolled back after the pass. Inside a block slots are revealed ancestrally
//! (1/k at step k of T) or by confidence (every slot ≥ τ, at least the most confident one);
//! the last step reveals the rest, and a step that revealed nothing skips the next forward.

use super::mdlm::{ancestral_reveal, Slot};
use super::{logits_at, Decoder, GenOptions, Generation, Progress, Start, StepTrace};
use crate::config::{Choice, ObjectiveKind};
use crate::model::visibility::block_causal_bias;
use crate::model::{padded, Attention, KvCache, Transformer};
use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

impl Choice for Reveal {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Ancestral,
            "ancestral",
            "each masked slot with probability 1/k at step k of T",
        ),
        (
            Self::Confidence,
            "confidence",
            "every slot at least τ-confident, else the most confident",
        ),
    ];
}

/// How the slots of a block are revealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reveal {
    /// Each masked slot with probability 1/k at step k of T (the reverse process).
    Ancestral,
    /// Every masked slot at least τ-confident, else the most confident one.
    Confidence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bd3lmDecoder {
    /// B': must be the block size the checkpoint was trained with.
    pub block_size: usize,
    /// T: denoising steps per block (0 = B').
    pub steps: usize,
    pub reveal: Reveal,
    /// τ for `Reveal::Confidence`.
    pub threshold: f64,
}

impl Default for Bd3lmDecoder {
    fn default() -> Self {
        Self {
            block_size: 8,
            steps: 0,
            reveal: Reveal::Ancestral,
            threshold: 0.9,
        }
    }
}

struct Row {
    /// Prompt and committed tokens, absolute positions from 0.
    text: Vec<u32>,
    /// Clean tokens text[cached..block_start] waiting for their keys/values.
    cached: usize,
    block_start: usize,
    /// Slots for the generated positions of the current block.
    slots: Vec<Slot>,
    /// Prompt tokens at the head of the current block (first block only).
    fixed: usize,
    step: usize,
    stale: bool,
    progress: Progress,
}

impl Bd3lmDecoder {
    pub fn validate(&self) -> Result<()> {
        if self.block_size < 1 {
            bail!("BD3LM block size must be at least 1");
        }
        if self.threshold.is_nan() || self.threshold < 0.0 {
            bail!("threshold τ must be ≥ 0, got {}", self.threshold);
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        if self.steps == 0 {
            self.block_size
        } else {
            self.steps
        }
    }

    fn choose(&self, row: &Row, rng: &mut impl rand::Rng) -> Vec<usize> {
        let steps = self.steps();
        match self.reveal {
            Reveal::Ancestral => ancestral_reveal(&row.slots, row.step, steps, rng),
            Reveal::Confidence => {
                let masked: Vec<usize> = (0..row.slots.len())
                    .filter(|&j| row.slots[j].token.is_none())
                    .collect();
                if row.step >= steps {
                    return masked;
                }
                let sure: Vec<usize> = masked
                    .iter()
                    .copied()
                    .filter(|&j| row.slots[j].conf as f64 >= self.threshold)
                    .collect();
                if !sure.is_empty() {
                    return sure;
                }
                let best = masked.iter().copied().max_by(|&a, &b| {
                    row.slots[a]
                        .conf
                        .total_cmp(&row.slots[b].conf)
                        .then(b.cmp(&a))
                });
                best.into_iter().collect()
            }
        }
    }

    /// Open the block after `row.block_start` (or the first one), sized by the budget.
    fn open_block(&self, row: &mut Row, prompt_len: usize, max_new: usize) {
        let b = self.block_size;
        let end_all = prompt_len + max_new;
        let start = row.text.len() / b * b;
        let end = (start + b).min(end_all);
        row.block_start = start;
        row.fixed = row.text.len() - start;
        row.slots = vec![Slot::masked(); end - row.text.len()];
        row.step = 0;
        row.stale = true;
    }
}

/// One pass: row r runs `inputs[r]` after its cached prefix. Returns f32 logits [B, T, V].
fn forward_blocks(
    model: &Transformer,
    cache: &mut KvCache,
    inputs: &[Vec<u32>],
    block: usize,
    pad: u32,
) -> Result<Tensor> {
    let (ids, valid) = padded(inputs, pad, model.device())?;
    let t = ids.dim(1)?;
    let bias = block_causal_bias(
        cache.lens(),
        &valid,
        t,
        block,
        model.dtype(),
        model.device(),
    )?;
    Ok(model.forward_padded(&ids, &valid, Attention::Mask(&bias), Some(cache))?)
}

impl Decoder for Bd3lmDecoder {
    fn name(&self) -> &'static str {
        "bd3lm"
    }

    fn fits(&self, objective: ObjectiveKind) -> bool {
        objective == ObjectiveKind::Bd3lm
    }

    fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        on_step: &mut dyn FnMut(&StepTrace),
    ) -> Result<Generation> {
        self.validate()?;
        let Start {
            clock: start,
            longest,
            mut rngs,
        } = Start::new(model, prompts, opts)?;
        let b = prompts.len();
        let bs = self.block_size;
        let mut cache = model.kv_cache(b, model.cfg.max_seq_len + longest + 2 * bs)?;
        let mut rows: Vec<Row> = prompts
            .iter()
            .map(|p| {
                let mut row = Row {
                    text: p.clone(),
                    cached: 0,
                    block_start: 0,
                    slots: Vec::new(),
                    fixed: 0,
                    step: 0,
                    stale: true,
                    progress: Progress::new(opts),
                };
                if !row.progress.done {
                    self.open_block(&mut row, p.len(), opts.max_new_tokens);
                }
                row
            })
            .collect();
        let mut forwards = 0;
        let mut fed = 0;
        while rows.iter().any(|r| !r.progress.done) {
            let inputs: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| {
                    if r.progress.done || !r.stale {
                        return Vec::new();
                    }
                    let clean = &r.text[r.cached..];
                    let block = r.slots.iter().map(|s| s.token.unwrap_or(opts.mask_id));
                    clean.iter().copied().chain(block).collect()
                })
                .collect();
            let logits = if inputs.iter().any(|i| !i.is_empty()) {
                forwards += 1;
                fed += inputs.iter().map(|i| i.len()).sum::<usize>();
                Some(forward_blocks(
                    model,
                    &mut cache,
                    &inputs,
                    bs,
                    opts.mask_id,
                )?)
            } else {
                None
            };
            for (r, row) in rows.iter_mut().enumerate() {
                if row.progress.done {
                    continue;
                }
                if !inputs[r].is_empty() {
                    // Keep the clean tokens' keys/values; the block's are scratch.
                    let logits = logits.as_ref().expect("a pass ran");
                    let block_at = row.block_start - row.cached;
                    cache.truncate_row(r, row.block_start);
                    row.cached = row.block_start;
                    row.progress.forwards += 1;
                    row.stale = false;
                    for j in 0..row.slots.len() {
                        if row.slots[j].token.is_some() {
                            continue;
                        }
                        let l = logits_at(logits, r, block_at + row.fixed + j)?;
                        let context = [row.text.as_slice()];
                        let (cand, conf) =
                            opts.sampling
                                .pick(&l, &context, &[opts.mask_id], &mut rngs[r]);
                        (row.slots[j].cand, row.slots[j].conf) = (cand, conf);
                    }
                }
                row.step += 1;
                let chosen = self.choose(row, &mut rngs[r]);
                for &j in &chosen {
                    row.slots[j].token = Some(row.slots[j].cand);
                }
                row.stale = !chosen.is_empty();
                let first = row.progress.tokens.len();
                on_step(&StepTrace {
                    row: r,
                    forward: forwards,
                    step: row.step,
                    slots: row
                        .slots
                        .iter()
                        .enumerate()
                        .map(|(j, s)| s.trace(first + j))
                        .collect(),
                    committed: chosen
                        .iter()
                        .map(|&j| row.slots[j].trace(first + j))
                        .collect(),
                    rejected: Vec::new(),
                });
                if row.slots.iter().any(|s| s.token.is_none()) {
                    continue;
                }
                // The block is complete: accept it, then open the next one.
                for s in std::mem::take(&mut row.slots) {
                    let tok = s.token.expect("complete block");
                    if !row.progress.push(r, tok, opts) || row.progress.done {
                        break;
                    }
                    row.text.push(tok);
                }
                if !row.progress.done {
                    self.open_block(row, prompts[r].len(), opts.max_new_tokens);
                }
            }
        }
        let rows = rows.into_iter().map(|r| r.progress).collect();
        Ok(Generation::from_rows(rows, forwards, fed, prompts, start))
    }
}
