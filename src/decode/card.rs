//! CARD's confidence-based dynamic parallel decoding (spec §3) on an exact KV cache.
//!
//! Each row keeps a window of K `[MASK]` slots after its committed text. One forward pass
//! runs the committed-but-uncached tokens followed by the window (causal inside it): slot 1
//! is predicted from the last committed position, slot j+1 from slot j. Every masked slot
//! whose confidence reaches τ is committed; if none does, the floor rule commits one; at the
//! step limit T_max the rest is filled. The window's keys/values are scratch: the cache rolls
//! back to the committed length after every pass, and committed tokens get their exact
//! keys/values at the start of the next pass (which also predicts the next window's slot 1).

use super::window::{Batch, Entry, RowLogits, RowState};
use super::{Decoder, GenOptions, Generation, SlotTrace, StepTrace};
use crate::config::{Choice, ObjectiveKind};
use crate::model::Transformer;
use anyhow::{bail, Result};
use rand_pcg::Pcg64;
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

/// A window position: masked (with this pass's candidate) until it is filled.
#[derive(Clone)]
struct Slot {
    token: Option<u32>,
    cand: u32,
    conf: f32,
    /// Passes this slot has been in the window.
    age: usize,
}

impl Entry for Slot {
    fn token(&self) -> Option<u32> {
        self.token
    }
}

impl Slot {
    const MASKED: Self = Self {
        token: None,
        cand: 0,
        conf: 0.0,
        age: 0,
    };

    /// The slot at generated-text position `pos` in a trace: its token, or its candidate.
    fn trace(&self, pos: usize) -> SlotTrace {
        SlotTrace::new(
            pos,
            self.token.unwrap_or(self.cand),
            self.conf,
            self.token.is_none(),
        )
    }
}

struct Row {
    state: RowState<Slot>,
    /// Logits predicting window[0] (from the last committed position), kept for a pass that
    /// feeds no newly committed token.
    slot0: Vec<f32>,
    /// Passes since the block opened.
    step: usize,
}

impl Row {
    /// Each masked slot's candidate and confidence from this pass, drawn in slot order: slot
    /// 1 from the committed prefix's logits, slot j+1 from slot j's output.
    fn predict(&mut self, logits: &RowLogits, prompt: &[u32], opts: &GenOptions, rng: &mut Pcg64) {
        if let Some(l) = logits.predicting(0) {
            self.slot0.clear();
            self.slot0.extend_from_slice(l);
        }
        let RowState {
            progress, window, ..
        } = &mut self.state;
        for (j, slot) in window.iter_mut().enumerate() {
            slot.age += 1;
            if slot.token.is_some() {
                continue;
            }
            let l = match j {
                0 => &self.slot0,
                _ => logits
                    .predicting(j)
                    .expect("every slot but the last is fed"),
            };
            let context = [prompt, progress.tokens.as_slice()];
            (slot.cand, slot.conf) = opts.sampling.pick(l, &context, &[opts.mask_id], rng);
        }
    }

    /// Row `r`'s step: its window, and the slots just committed.
    fn trace(&self, r: usize, forward: usize, chosen: &[usize], trace: &mut StepTrace) {
        trace.start(r, forward, self.step);
        let (first, window) = (self.state.first(), &self.state.window);
        let slots = window.iter().enumerate();
        trace.slots.extend(slots.map(|(j, s)| s.trace(first + j)));
        let committed = chosen.iter().map(|&j| window[j].trace(first + j));
        trace.committed.extend(committed);
    }
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

    /// Open the window: a new block of K masked slots once the last one has left, or
    /// (sliding) top the window up to K slots; never past the row's budget.
    fn open(&self, row: &mut Row, opts: &GenOptions) {
        let window = &mut row.state.window;
        let room = opts.max_new_tokens - row.state.progress.tokens.len() - window.len();
        let want = match self.commit {
            CommitMode::Block if window.is_empty() => self.block_size.min(room),
            CommitMode::Block => 0,
            CommitMode::Sliding => (self.block_size - window.len()).min(room),
        };
        if self.commit == CommitMode::Block && want > 0 {
            row.step = 0;
        }
        window.extend(std::iter::repeat_n(Slot::MASKED, want));
    }

    /// Indices of the masked slots to commit this step, into `chosen` (a reused buffer):
    /// those at least τ confident and those the step limit forces, else the floor's one.
    fn choose(&self, row: &Row, chosen: &mut Vec<usize>) {
        chosen.clear();
        let w = &row.state.window;
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

    /// The filled slots that leave the window, into `tokens`: the whole block once every
    /// slot is filled, or (sliding) the filled run at its left.
    fn release(&self, window: &mut Vec<Slot>, tokens: &mut Vec<u32>) {
        let ready = match self.commit {
            CommitMode::Block if window.iter().all(|s| s.token.is_some()) => window.len(),
            CommitMode::Block => 0,
            CommitMode::Sliding => window.iter().take_while(|s| s.token.is_some()).count(),
        };
        tokens.clear();
        tokens.extend(window.drain(..ready).map(|s| s.token.expect("filled")));
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
        let k = self.block_size;
        let (mut batch, mut rngs) = Batch::start(model, prompts, opts, 2 * k)?;
        let mut rows: Vec<Row> = prompts
            .iter()
            .map(|p| Row {
                state: RowState::new(p, opts, k),
                slot0: Vec::new(),
                step: 0,
            })
            .collect();
        // Buffers reused by every pass: the loop allocates nothing of its own per token.
        let (mut chosen, mut tokens) = (Vec::with_capacity(k), Vec::with_capacity(k));
        let mut trace = StepTrace::reused(k);
        loop {
            for row in rows.iter_mut().filter(|r| !r.state.progress.done) {
                self.open(row, opts);
            }
            if rows.iter().all(|r| r.state.progress.done) {
                break;
            }
            // Every slot but the last is fed (its token or [MASK]): it predicts the next one.
            let fed = rows.iter_mut().map(|row| {
                let n = row.state.window.len().saturating_sub(1);
                (&mut row.state, n)
            });
            batch.pass(fed, opts.mask_id)?;
            for (r, row) in rows.iter_mut().enumerate() {
                if row.state.progress.done {
                    continue;
                }
                // The committed tokens keep their keys/values; the window is scratch.
                batch.keep(r, 0);
                row.step += 1;
                row.predict(&batch.logits(r), &prompts[r], opts, &mut rngs[r]);
                self.choose(row, &mut chosen);
                for &j in &chosen {
                    row.state.window[j].token = Some(row.state.window[j].cand);
                }
                row.trace(r, batch.forwards(), &chosen, &mut trace);
                on_step(&trace);
                self.release(&mut row.state.window, &mut tokens);
                row.state.commit(r, &tokens, 0, opts);
                if row.state.progress.done {
                    row.state.window.clear();
                }
            }
        }
        let rows = rows.into_iter().map(|r| r.state.progress).collect();
        Ok(batch.finish(rows, prompts))
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
        let mut state = RowState::new(&[], &opts, slots.len());
        state.window.extend(slots.iter().map(|&(token, conf)| Slot {
            token,
            cand: 7,
            conf,
            age: step,
        }));
        Row {
            state,
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
