//! CARD's confidence-based dynamic parallel decoding (spec §3) on an exact KV cache.
//!
//! Each row keeps a window of K `[MASK]` slots after its committed text. One forward pass
//! runs the committed-but-uncached tokens followed by the window (causal inside it): slot 1
//! is predicted from the last committed position, slot j+1 from slot j. Every masked slot
//! whose confidence reaches τ is committed; if none does, the floor rule commits one; at the
//! step limit T_max the rest is filled. The window's keys/values are scratch: the cache rolls
//! back to the committed length after every pass, and committed tokens get their exact
//! keys/values at the start of the next pass (which also predicts the next window's slot 1).

use super::{
    check_budget, forward_rows, logits_at, new_cache, row_rng, Decoder, Finish, GenOptions,
    Generation, RowOutput, SlotTrace, StepTrace,
};
use crate::config::ObjectiveKind;
use crate::model::Transformer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Which slot to commit when no masked slot reaches the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Floor {
    /// The leftmost masked slot (AR-like).
    Leftmost,
    /// The masked slot with the highest confidence.
    MostConfident,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CommitMode {
    /// Fill the whole block of K slots, then open the next one.
    Block,
    /// After each step commit the filled left-contiguous run and keep K slots pending.
    Sliding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardDecoder {
    /// K: slots decoded in parallel.
    pub block_size: usize,
    /// T_max: passes after which every remaining slot of a block is filled (in sliding mode:
    /// a slot is filled at the latest T_max passes after it entered the window).
    pub step_limit: usize,
    /// τ: commit a masked slot when its confidence is at least this (> 1: floor rule only).
    pub threshold: f64,
    pub floor: Floor,
    pub commit: CommitMode,
}

impl Default for CardDecoder {
    fn default() -> Self {
        Self {
            block_size: 8,
            step_limit: 8,
            threshold: 0.9,
            floor: Floor::Leftmost,
            commit: CommitMode::Block,
        }
    }
}

#[derive(Clone)]
struct Slot {
    token: Option<u32>,
    cand: u32,
    conf: f32,
    /// Passes this slot has been in the window.
    age: usize,
}

struct Row {
    gen: Vec<u32>,
    /// Committed tokens whose keys/values are not in the cache yet (the prompt at first).
    pending: Vec<u32>,
    window: Vec<Slot>,
    /// Logits predicting window[0] (from the last committed position).
    slot0: Vec<f32>,
    step: usize,
    done: bool,
    finish: Finish,
    forwards: usize,
}

impl CardDecoder {
    pub fn validate(&self) -> Result<()> {
        if self.block_size < 1 {
            bail!("block size K must be at least 1");
        }
        if self.step_limit < 1 {
            bail!("step limit T_max must be at least 1");
        }
        // τ > 1 is allowed here (no slot passes: floor-only decoding); the CLI keeps [0, 1].
        if self.threshold.is_nan() || self.threshold < 0.0 {
            bail!("threshold τ must be ≥ 0, got {}", self.threshold);
        }
        Ok(())
    }

    /// Indices of the masked slots to commit this step.
    fn choose(&self, row: &Row) -> Vec<usize> {
        let masked: Vec<usize> = (0..row.window.len())
            .filter(|&j| row.window[j].token.is_none())
            .collect();
        let forced: Vec<usize> = match self.commit {
            CommitMode::Block if row.step >= self.step_limit => masked.clone(),
            CommitMode::Block => Vec::new(),
            CommitMode::Sliding => {
                // A slot past the step limit forces itself and everything left of it.
                match masked
                    .iter()
                    .rposition(|&j| row.window[j].age >= self.step_limit)
                {
                    Some(k) => masked[..=k].to_vec(),
                    None => Vec::new(),
                }
            }
        };
        let mut chosen: Vec<usize> = masked
            .iter()
            .copied()
            .filter(|&j| forced.contains(&j) || row.window[j].conf as f64 >= self.threshold)
            .collect();
        if chosen.is_empty() {
            let floor = match self.floor {
                Floor::Leftmost => masked[0],
                Floor::MostConfident => *masked
                    .iter()
                    .max_by(|&&a, &&b| {
                        row.window[a]
                            .conf
                            .total_cmp(&row.window[b].conf)
                            .then(b.cmp(&a))
                    })
                    .expect("a step runs only with masked slots"),
            };
            chosen.push(floor);
        }
        chosen
    }
}

/// Append committed tokens to a row, stopping at EOS, a stop condition or the budget.
fn accept(r: usize, row: &mut Row, tokens: &[u32], opts: &GenOptions) {
    for &tok in tokens {
        if tok == opts.eos_id {
            (row.done, row.finish) = (true, Finish::Eos);
            return;
        }
        row.gen.push(tok);
        row.pending.push(tok);
        if opts.stop.is_some_and(|s| s(r, &row.gen)) {
            (row.done, row.finish) = (true, Finish::Stop);
            return;
        }
    }
    if row.gen.len() >= opts.max_new_tokens {
        row.done = true;
    }
}

impl Decoder for CardDecoder {
    fn name(&self) -> &'static str {
        "card"
    }

    fn fits(&self, objective: ObjectiveKind) -> bool {
        // Only CARD is trained to predict from [MASK]ed context.
        objective == ObjectiveKind::Card
    }

    fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        on_step: &mut dyn FnMut(&StepTrace),
    ) -> Result<Generation> {
        self.validate()?;
        check_budget(model, prompts, opts.max_new_tokens)?;
        let start = Instant::now();
        let b = prompts.len();
        let k = self.block_size;
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut cache = new_cache(model, b, longest + 2 * k)?;
        let mut rngs: Vec<_> = (0..b).map(|r| row_rng(opts.seed, r)).collect();
        let mut rows: Vec<Row> = prompts
            .iter()
            .map(|p| Row {
                gen: Vec::new(),
                pending: p.clone(),
                window: Vec::new(),
                slot0: Vec::new(),
                step: 0,
                done: opts.max_new_tokens == 0,
                finish: Finish::Length,
                forwards: 0,
            })
            .collect();
        let mut forwards = 0;
        loop {
            // Open windows: a new block, or top up a sliding window to K slots.
            for row in rows.iter_mut().filter(|r| !r.done) {
                let room = opts.max_new_tokens - row.gen.len() - row.window.len();
                let want = match self.commit {
                    CommitMode::Block if row.window.is_empty() => k.min(room),
                    CommitMode::Block => 0,
                    CommitMode::Sliding => (k - row.window.len()).min(room),
                };
                if self.commit == CommitMode::Block && want > 0 {
                    row.step = 0;
                }
                let fresh = Slot {
                    token: None,
                    cand: 0,
                    conf: 0.0,
                    age: 0,
                };
                row.window.extend(std::iter::repeat_n(fresh, want));
            }
            if rows.iter().all(|r| r.done) {
                break;
            }
            let inputs: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| {
                    if r.done {
                        return Vec::new();
                    }
                    let drafts = r.window[..r.window.len() - 1]
                        .iter()
                        .map(|s| s.token.unwrap_or(opts.mask_id));
                    r.pending.iter().copied().chain(drafts).collect()
                })
                .collect();
            let before: Vec<usize> = cache.lens().to_vec();
            let logits = if inputs.iter().any(|i| !i.is_empty()) {
                forwards += 1;
                Some(forward_rows(model, &mut cache, &inputs, opts.eos_id)?)
            } else {
                None
            };
            for (r, row) in rows.iter_mut().enumerate() {
                if row.done {
                    continue;
                }
                let p = row.pending.len();
                cache.truncate_row(r, before[r] + p);
                row.forwards += 1;
                row.step += 1;
                if p > 0 {
                    row.slot0 = logits_at(logits.as_ref().expect("pending input ran"), r, p - 1)?;
                }
                row.pending.clear();
                for j in 0..row.window.len() {
                    row.window[j].age += 1;
                    if row.window[j].token.is_some() {
                        continue;
                    }
                    // Slot 1 reads the kept prefix logits; the others this pass's outputs.
                    let fresh;
                    let l: &[f32] = if j == 0 {
                        &row.slot0
                    } else {
                        fresh = logits_at(logits.as_ref().expect("window ran"), r, p + j - 1)?;
                        &fresh
                    };
                    let context = [prompts[r].as_slice(), row.gen.as_slice()];
                    let (cand, conf) =
                        opts.sampling
                            .pick(l, &context, &[opts.mask_id], &mut rngs[r]);
                    (row.window[j].cand, row.window[j].conf) = (cand, conf);
                }
                let chosen = self.choose(row);
                for &j in &chosen {
                    row.window[j].token = Some(row.window[j].cand);
                }
                let trace = |j: usize, s: &Slot| SlotTrace {
                    pos: row.gen.len() + j,
                    token: s.token.unwrap_or(s.cand),
                    confidence: s.conf,
                    masked: s.token.is_none(),
                };
                on_step(&StepTrace {
                    row: r,
                    forward: forwards,
                    step: row.step,
                    slots: row
                        .window
                        .iter()
                        .enumerate()
                        .map(|(j, s)| trace(j, s))
                        .collect(),
                    committed: chosen.iter().map(|&j| trace(j, &row.window[j])).collect(),
                });
                let ready = match self.commit {
                    CommitMode::Block if row.window.iter().all(|s| s.token.is_some()) => {
                        row.window.len()
                    }
                    CommitMode::Block => 0,
                    CommitMode::Sliding => {
                        row.window.iter().take_while(|s| s.token.is_some()).count()
                    }
                };
                let tokens: Vec<u32> = row
                    .window
                    .drain(..ready)
                    .map(|s| s.token.expect("filled"))
                    .collect();
                accept(r, row, &tokens, opts);
                if row.done {
                    row.window.clear();
                }
            }
        }
        let rows = rows
            .into_iter()
            .map(|r| RowOutput {
                tokens: r.gen,
                forward_passes: r.forwards,
                finish: r.finish,
            })
            .collect();
        Ok(Generation {
            rows,
            forward_passes: forwards,
            elapsed_s: start.elapsed().as_secs_f64(),
        })
    }
}
