//! The decoding window the causal decoders share (AR, CARD, the verifier).
//!
//! Each row of a ragged batch is a [`RowState`]: its progress, the committed tokens whose
//! keys/values are not cached yet (`pending`: the prompt at first), and the window after
//! them, a list of entries that each feed the model a known token (a draft, a filled slot)
//! or `[MASK]`. A [`Batch`] pass feeds every live row its pending tokens then its window;
//! the logits after the last pending token predict window entry 0, those after entry j
//! predict entry j+1. The window's keys/values are scratch: after reading the logits a
//! decoder keeps the entries that stood ([`Batch::keep`]) and the cache forgets the rest.

use super::{DraftSource, GenOptions, Generation, Progress, SlotTrace, Start, StepTrace};
use crate::model::{Session, Transformer, Tree};
use anyhow::Result;
use rand_pcg::Pcg64;
use std::time::Instant;

/// What a window entry feeds the model.
pub(crate) trait Entry {
    /// The known token, or None for a `[MASK]` slot.
    fn token(&self) -> Option<u32>;

    /// An alternative in a draft tree: the window entry it follows (None: the committed
    /// text) instead of the entry before it.
    fn branch(&self) -> Option<Option<usize>> {
        None
    }
}

/// A window of plain drafts (AR's is always empty).
impl Entry for u32 {
    fn token(&self) -> Option<u32> {
        Some(*self)
    }
}

/// One row's decoding state.
pub(crate) struct RowState<E> {
    pub progress: Progress,
    /// Committed tokens whose keys/values are not cached yet (the prompt at first).
    pub pending: Vec<u32>,
    /// The entries after the committed text, in position order.
    pub window: Vec<E>,
}

impl<E> RowState<E> {
    pub fn new(prompt: &[u32], opts: &GenOptions, window: usize) -> Self {
        Self {
            progress: Progress::new(opts),
            pending: prompt.to_vec(),
            window: Vec::with_capacity(window),
        }
    }

    /// The generated-text position of window entry 0.
    pub fn first(&self) -> usize {
        self.progress.tokens.len()
    }

    /// New tokens the row may still commit.
    pub fn room(&self, opts: &GenOptions) -> usize {
        opts.max_new_tokens - self.progress.tokens.len()
    }

    /// Row `r` commits `tokens` until it finishes; the first `cached` already have their
    /// keys/values (drafts that stood), the rest wait in `pending` for the next pass.
    pub fn commit(&mut self, r: usize, tokens: &[u32], cached: usize, opts: &GenOptions) {
        for (i, &tok) in tokens.iter().enumerate() {
            if !self.progress.push(r, tok, opts) || self.progress.done {
                return;
            }
            if i >= cached {
                self.pending.push(tok);
            }
        }
    }
}

/// The batched passes over the rows' windows on one cached model, and what they cost.
pub(crate) struct Batch<'m> {
    session: Session<'m>,
    clock: Instant,
    /// Buffers reused by every pass: each row's input, and what it had before.
    inputs: Vec<Vec<u32>>,
    marks: Vec<Mark>,
    forwards: usize,
    /// Each row's tree in the last pass (None: a chain).
    trees: Vec<Option<Tree>>,
}

/// A row's cache before a pass.
#[derive(Clone, Copy, Default)]
struct Mark {
    /// Positions cached.
    cached: usize,
    /// Pending tokens the pass fed after them.
    pending: usize,
}

impl<'m> Batch<'m> {
    /// Refuse prompts that cannot fit, start the clock and size the session with `window`
    /// scratch positions (see `Start::session`); also each row's sampling RNG.
    pub fn start(
        model: &'m Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        window: usize,
    ) -> Result<(Self, Vec<Pcg64>)> {
        let begin = Start::new(model, prompts, opts)?;
        let b = prompts.len();
        let session = begin.session(model, opts, b, window)?;
        let batch = Self {
            session,
            clock: begin.clock,
            inputs: (0..b).map(|_| Vec::new()).collect(),
            marks: vec![Mark::default(); b],
            forwards: 0,
            trees: Vec::with_capacity(b),
        };
        Ok((batch, begin.rngs))
    }

    /// One pass: every live row, given with how many of its window entries to feed, feeds
    /// its pending tokens then those entries ([MASK] for a masked one), and counts the pass
    /// as its own; a row whose entries branch feeds them as a tree. No pass runs when no row
    /// has anything to feed.
    pub fn pass<'r, E: Entry + 'r>(
        &mut self,
        rows: impl IntoIterator<Item = (&'r mut RowState<E>, usize)>,
        mask_id: u32,
    ) -> Result<()> {
        let lens = self.session.lens();
        let inputs = self.inputs.iter_mut().zip(&mut self.marks).zip(lens);
        self.trees.clear();
        for (((input, mark), &cached), (row, n)) in inputs.zip(rows) {
            input.clear();
            *mark = Mark { cached, pending: 0 };
            let fed = &row.window[..n];
            let branches = !row.progress.done && fed.iter().any(|e| e.branch().is_some());
            self.trees.push(match branches {
                true => Some(tree(row.pending.len(), fed)?),
                false => None,
            });
            if row.progress.done {
                continue;
            }
            mark.pending = row.pending.len();
            let window = fed.iter().map(|e| e.token().unwrap_or(mask_id));
            input.extend(row.pending.iter().copied().chain(window));
            row.pending.clear();
            row.progress.forwards += 1;
        }
        if self.inputs.iter().any(|i| !i.is_empty()) {
            self.forwards += 1;
            if self.trees.iter().all(Option::is_none) {
                // Chains: a pass allocates nothing.
                self.session.forward(&self.inputs)?;
            } else {
                let trees: Vec<Option<&Tree>> = self.trees.iter().map(Option::as_ref).collect();
                self.session.forward_tree(&self.inputs, &trees)?;
            }
        }
        Ok(())
    }

    /// Row r's logits from the last pass.
    pub fn logits(&self, r: usize) -> RowLogits<'_> {
        RowLogits {
            session: &self.session,
            r,
            pending: self.marks[r].pending,
        }
    }

    /// Roll row r back to what it keeps: its cached prefix, the pending tokens it fed and
    /// the first `stood` window entries; the rest of the pass was scratch.
    pub fn keep(&mut self, r: usize, stood: usize) {
        let Mark { cached, pending } = self.marks[r];
        self.session.truncate_row(r, cached + pending + stood);
    }

    /// Positions fed through the model by every pass so far.
    pub fn fed(&self) -> usize {
        self.session.fed()
    }

    /// Batched passes run so far (the 1-based index of the last one).
    pub fn forwards(&self) -> usize {
        self.forwards
    }

    pub fn finish(self, rows: Vec<Progress>, prompts: &[Vec<u32>]) -> Generation {
        let fed = self.session.fed();
        Generation::from_rows(rows, self.forwards, fed, prompts, self.clock)
    }
}

/// The tree a row feeds: `pending` committed tokens in a chain, then the window entries,
/// each after the entry before it or, for a branch, after the entry it names.
fn tree<E: Entry>(pending: usize, window: &[E]) -> Result<Tree> {
    // Fed index of window entry e, and of the last pending token for None.
    let fed = |e: Option<usize>| (pending + e.map_or(0, |e| e + 1)).checked_sub(1);
    let chain = (0..pending).map(|i| i.checked_sub(1));
    let entries = window
        .iter()
        .enumerate()
        .map(|(e, entry)| match entry.branch() {
            Some(after) => fed(after),
            None => fed(e.checked_sub(1)),
        });
    Tree::new(&chain.chain(entries).collect::<Vec<_>>())
}

/// One row's logits from the last pass, by the window entry they predict.
pub(crate) struct RowLogits<'a> {
    session: &'a Session<'a>,
    r: usize,
    pending: usize,
}

impl<'a> RowLogits<'a> {
    /// The logits predicting window entry j: after the last pending token (j = 0) or after
    /// entry j-1. None when the pass fed neither.
    pub fn predicting(&self, j: usize) -> Option<&'a [f32]> {
        let i = (self.pending + j).checked_sub(1)?;
        Some(self.session.logits(self.r, i))
    }

    /// The logits after window entry e (None: after the last pending token): what follows
    /// it on its branch of a tree.
    pub fn after(&self, e: Option<usize>) -> Option<&'a [f32]> {
        self.predicting(e.map_or(0, |e| e + 1))
    }
}

impl StepTrace {
    /// An empty trace to fill for every step, with room for windows of `k` slots (and no
    /// rejected drafts until a verifier rejects one).
    pub(crate) fn reused(k: usize) -> Self {
        Self {
            row: 0,
            forward: 0,
            step: 1,
            slots: Vec::with_capacity(k),
            committed: Vec::with_capacity(k + 1),
            rejected: Vec::new(),
        }
    }

    /// Start row `row`'s trace of pass `forward`, step `step`: empty lists.
    pub(crate) fn start(&mut self, row: usize, forward: usize, step: usize) {
        (self.row, self.forward, self.step) = (row, forward, step);
        self.slots.clear();
        self.committed.clear();
        self.rejected.clear();
    }
}

impl SlotTrace {
    pub(crate) fn new(pos: usize, token: u32, confidence: f32, masked: bool) -> Self {
        Self {
            pos,
            token,
            confidence,
            masked,
            source: None,
            branch: false,
        }
    }

    /// The same slot, its token drafted by `source`.
    pub(crate) fn drafted_by(self, source: Option<DraftSource>) -> Self {
        Self { source, ..self }
    }

    /// The same slot, marked as standing on a branch of a draft tree when `branch`.
    pub(crate) fn on_branch(self, branch: bool) -> Self {
        Self { branch, ..self }
    }
}
