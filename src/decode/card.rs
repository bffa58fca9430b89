//! CARD's confidence-based dynamic parallel decoding (spec §3) on an exact KV cache.
//!
//! Each row keeps a window of K `[MASK]` slots after its committed text. One forward pass
//! runs the committed-but-uncached tokens followed by the window (causal inside it): slot 1
//! is predicted from the last committed position, slot j+1 from slot j. Every masked slot
//! whose confidence reaches τ is committed; if none does, the floor rule commits one; at the
//! step limit T_max the rest is filled. The window's keys/values are scratch: the cache rolls
//! back to the committed length after every pass, and committed tokens get their exact
//! keys/values at the start of the next pass (which also predicts the next window's slot 1).

use super::{Decoder, GenOptions, Generation, Progress, SlotTrace, Start, StepTrace};
use crate::config::{Choice, ObjectiveKind};
use crate::model::Transformer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

impl Choice for Floor {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Leftmost,
            "leftmost",
            "the leftmost masked slot (AR-like)",
        ),
        (
            Self::MostConfident,
            "most-confident",
            "the most confident masked slot",
        ),
    ];
}

impl Choice for CommitMode {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Block,
            "block",
            "fill the whole block of K slots, then open the next",
        ),
        (
            Self::Sliding,
            "sliding",
            "commit the filled left run and keep K slots pending",
        ),
    ];
}

/// Which slot to commit when no masked slot reaches the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Floor {
    /// The leftmost masked slot (AR-like).
    Leftmost,
    /// The masked slot with the highest confidence.
    MostConfident,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    progress: Progress,
    /// Committed tokens whose keys/values are not in the cache yet (the prompt at first).
    pending: Vec<u32>,
    window: Vec<Slot>,
    /// Logits predicting window[0] (from the last committed position).
    slot0: Vec<f32>,
    step: usize,
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

    /// Indices of the masked slots to commit this step, into `chosen` (a reused buffer).
    fn choose(&self, row: &Row, chosen: &mut Vec<usize>) {
        chosen.clear();
        let w = &row.window;
        let masked = |j: usize| w[j].token.is_none();
        // Slots forced by the step limit: window indices below `forced_below`.
        let forced_below = match self.commit {
            CommitMode::Block if row.step >= self.step_limit => w.len(),
            CommitMode::Block => 0,
            // A slot past the step limit forces itself and every masked slot left of it.
            CommitMode::Sliding => (0..w.len())
                .rev()
                .find(|&j| masked(j) && w[j].age >= self.step_limit)
                .map_or(0, |j| j + 1),
        };
        chosen
            .extend((0..w.len()).filter(|&j| {
                masked(j) && (j < forced_below || w[j].conf as f64 >= self.threshold)
            }));
        if chosen.is_empty() {
            let mut candidates = (0..w.len()).filter(|&j| masked(j));
            let floor = match self.floor {
                Floor::Leftmost => candidates.next(),
                Floor::MostConfident => {
                    candidates.max_by(|&a, &b| w[a].conf.total_cmp(&w[b].conf).then(b.cmp(&a)))
                }
            };
            chosen.push(floor.expect("a step runs only with masked slots"));
        }
    }
}

/// Commit tokens to a row (they get their keys/values in the next pass) until it finishes.
fn accept(r: usize, row: &mut Row, tokens: &[u32], opts: &GenOptions) {
    for &tok in tokens {
        if !row.progress.push(r, tok, opts) || row.progress.done {
            return;
        }
        row.pending.push(tok);
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
        let begin = Start::new(model, prompts, opts)?;
        let b = prompts.len();
        let k = self.block_size;
        let mut stepper = begin.session(model, opts, b, 2 * k)?;
        let Start {
            clock: start,
            mut rngs,
            ..
        } = begin;
        let mut rows: Vec<Row> = prompts
            .iter()
            .map(|p| Row {
                progress: Progress::new(opts),
                pending: p.clone(),
                window: Vec::with_capacity(k),
                slot0: Vec::new(),
                step: 0,
            })
            .collect();
        let mut forwards = 0;
        // Buffers reused by every pass: the loop allocates nothing of its own per token.
        let mut inputs: Vec<Vec<u32>> = (0..b).map(|_| Vec::new()).collect();
        let mut before: Vec<usize> = Vec::with_capacity(b);
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        let mut tokens: Vec<u32> = Vec::with_capacity(k);
        let mut trace = StepTrace {
            row: 0,
            forward: 0,
            step: 0,
            slots: Vec::with_capacity(k),
            committed: Vec::with_capacity(k),
            rejected: Vec::new(),
        };
        loop {
            // Open windows: a new block, or top up a sliding window to K slots.
            for row in rows.iter_mut().filter(|r| !r.progress.done) {
                let room = opts.max_new_tokens - row.progress.tokens.len() - row.window.len();
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
            if rows.iter().all(|r| r.progress.done) {
                break;
            }
            for (input, r) in inputs.iter_mut().zip(&rows) {
                input.clear();
                if !r.progress.done {
                    let drafts = r.window[..r.window.len() - 1]
                        .iter()
                        .map(|s| s.token.unwrap_or(opts.mask_id));
                    input.extend(r.pending.iter().copied().chain(drafts));
                }
            }
            before.clear();
            before.extend_from_slice(stepper.lens());
            if inputs.iter().any(|i| !i.is_empty()) {
                forwards += 1;
                stepper.forward(&inputs)?;
            }
            for (r, row) in rows.iter_mut().enumerate() {
                if row.progress.done {
                    continue;
                }
                let p = row.pending.len();
                stepper.truncate_row(r, before[r] + p);
                row.progress.forwards += 1;
                row.step += 1;
                if p > 0 {
                    let l = stepper.logits(r, p - 1);
                    row.slot0.clear();
                    row.slot0.extend_from_slice(l);
                }
                row.pending.clear();
                for j in 0..row.window.len() {
                    row.window[j].age += 1;
                    if row.window[j].token.is_some() {
                        continue;
                    }
                    // Slot 1 reads the kept prefix logits; the others this pass's outputs.
                    let l: &[f32] = if j == 0 {
                        &row.slot0
                    } else {
                        stepper.logits(r, p + j - 1)
                    };
                    let context = [prompts[r].as_slice(), row.progress.tokens.as_slice()];
                    let (cand, conf) =
                        opts.sampling
                            .pick(l, &context, &[opts.mask_id], &mut rngs[r]);
                    (row.window[j].cand, row.window[j].conf) = (cand, conf);
                }
                self.choose(row, &mut chosen);
                for &j in &chosen {
                    row.window[j].token = Some(row.window[j].cand);
                }
                let slot_trace = |j: usize, s: &Slot| SlotTrace {
                    pos: row.progress.tokens.len() + j,
                    token: s.token.unwrap_or(s.cand),
                    confidence: s.conf,
                    masked: s.token.is_none(),
                };
                (trace.row, trace.forward, trace.step) = (r, forwards, row.step);
                trace.slots.clear();
                trace
                    .slots
                    .extend(row.window.iter().enumerate().map(|(j, s)| slot_trace(j, s)));
                trace.committed.clear();
                trace
                    .committed
                    .extend(chosen.iter().map(|&j| slot_trace(j, &row.window[j])));
                on_step(&trace);
                let ready = match self.commit {
                    CommitMode::Block if row.window.iter().all(|s| s.token.is_some()) => {
                        row.window.len()
                    }
                    CommitMode::Block => 0,
                    CommitMode::Sliding => {
                        row.window.iter().take_while(|s| s.token.is_some()).count()
                    }
                };
                tokens.clear();
                tokens.extend(row.window.drain(..ready).map(|s| s.token.expect("filled")));
                accept(r, row, &tokens, opts);
                if row.progress.done {
                    row.window.clear();
                }
            }
        }
        let rows = rows.into_iter().map(|r| r.progress).collect();
        Ok(Generation::from_rows(
            rows,
            forwards,
            stepper.fed(),
            prompts,
            start,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Sampling;

    /// A row whose window holds these (committed token, confidence) slots, at `step`.
    fn row(slots: &[(Option<u32>, f32)], step: usize) -> Row {
        let opts = GenOptions {
            max_new_tokens: 16,
            eos_id: 0,
            mask_id: 1,
            sampling: Sampling::default(),
            seed: 0,
            stop: None,
            backend: None,
        };
        Row {
            progress: Progress::new(&opts),
            pending: Vec::new(),
            window: slots
                .iter()
                .map(|&(token, conf)| Slot {
                    token,
                    cand: 7,
                    conf,
                    age: step,
                })
                .collect(),
            slot0: Vec::new(),
            step,
        }
    }

    fn chosen(d: &CardDecoder, r: &Row) -> Vec<usize> {
        let mut out = Vec::new();
        d.choose(r, &mut out);
        out
    }

    #[test]
    fn floors_pick_their_slot_only_when_none_passes() {
        let d = |tau: f64, floor: Floor| CardDecoder {
            block_size: 5,
            step_limit: 8,
            threshold: tau,
            floor,
            commit: CommitMode::Block,
        };
        // Slot 1 is committed (its high confidence is no candidate's); 2 and 3 tie.
        let r = row(
            &[
                (None, 0.3),
                (Some(4), 0.95),
                (None, 0.6),
                (None, 0.6),
                (None, 0.1),
            ],
            1,
        );
        assert_eq!(chosen(&d(0.9, Floor::MostConfident), &r), [2]);
        assert_eq!(chosen(&d(0.9, Floor::Leftmost), &r), [0]);
        // Above-threshold slots are all committed and the floor is not consulted.
        assert_eq!(chosen(&d(0.5, Floor::MostConfident), &r), [2, 3]);
        assert_eq!(chosen(&d(0.5, Floor::Leftmost), &r), [2, 3]);
        // τ = 1: only a certain slot passes; otherwise the floor's most confident one.
        let certain = row(&[(None, 0.2), (None, 1.0), (None, 0.9)], 1);
        assert_eq!(chosen(&d(1.0, Floor::MostConfident), &certain), [1]);
        let unsure = row(&[(None, 0.2), (None, 0.4), (None, 0.99)], 1);
        assert_eq!(chosen(&d(1.0, Floor::MostConfident), &unsure), [2]);
        assert_eq!(chosen(&d(1.0, Floor::Leftmost), &unsure), [0]);
        // At the step limit every masked slot of the block is filled.
        let late = row(&[(None, 0.2), (Some(3), 0.4), (None, 0.1)], 8);
        assert_eq!(chosen(&d(1.0, Floor::MostConfident), &late), [0, 2]);
    }
}
