//! Lossless parallel decoding for CARD checkpoints: drafts made in `[MASK]` slots, checked by
//! the same model reading them as clean input (self-speculative decoding on an exact KV cache).
//!
//! A CARD model fed clean tokens is an autoregressive model. Each pass feeds, per row, the
//! committed tokens not yet cached, then the row's drafts as if they were text, then K
//! `[MASK]` slots. The logits after the last committed token and after each draft are the
//! AR predictions there: drafts are accepted while they equal what AR would pick (greedy), or
//! by speculative rejection sampling (temperature > 0), and the first position that is not
//! accepted gets AR's own token. So every pass commits at least one token and the output is
//! AR's — identical under greedy (up to floating-point ties: a multi-position pass need not
//! round exactly as single-token passes do; the tests and every benchmark row so far found
//! the texts identical), equal in distribution under sampling.
//!
//! The `[MASK]` slots after the drafts predict the positions after the pass's AR token, from
//! a context whose last slots are masked: CARD's parallel predictions. They become the next
//! pass's drafts when every draft was accepted. After a rejection they were predicted from a
//! wrong context, so the next pass has no drafts: it feeds AR's token and K fresh masks.
//! (Keeping the drafts behind a rejected one, predicted from several masks, was measured:
//! their acceptance was a few percent against ~40% for a fresh one-mask draft, and the window
//! never got back to fresh drafts.)
//!
//! With `lookup` L > 0, a pass may take its drafts from the text instead (prompt lookup,
//! `lookup.rs`): when the text's last tokens occurred before, what followed them, up to L
//! tokens. The verifier checks drafts whatever made them, so the output stays AR's; with
//! K = 0 no `[MASK]` slot is fed and any causal model, ARM included, decodes this way.
//!
//! How much a pass carries is the row's budget (`budget.rs`): per source, the running
//! acceptance by draft position, weighed against the cost of more positions (fitted to the
//! passes' own timings, or fixed by `cost`). Each pass takes the source, lookup or the mask
//! slots' drafts, with the better expected tokens per cost, cut to the length that pays, and
//! feeds as many `[MASK]` slots as pay in the steady state: none when plain AR is faster, so
//! drafts that are always wrong cost no more than AR's passes (and a periodic probe).
//!
//! The cache keeps the committed prefix and the accepted drafts; the rejected tail, the
//! masks and the unaccepted drafts are scratch, rolled back after every pass.

use super::budget::{Budget, LookupPlan, MaskPlan, PassCost, TreePlan};
use super::lookup;
use super::sampling::draw;
use super::tree::{self, main_drafts, on_main, outcome, walk, Draft, Slot};
use super::window::{Batch, RowLogits, RowState};
use super::{Decoder, DraftSource, GenOptions, Generation, SlotTrace, StepTrace};
use crate::config::ObjectiveKind;
use crate::model::visibility::TREE_MAX;
use crate::model::Transformer;
use anyhow::{bail, Result};
use rand::Rng;
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The most lookup drafts a pass proposes when no L is given (the budget sends fewer where
/// they do not pay).
pub const DEFAULT_LOOKUP: usize = 8;

/// The most runners-up of a first mask draft a tree offers.
const MAX_RUNNERS_UP: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyDecoder {
    /// K: `[MASK]` slots per pass (their predictions are the next pass's drafts).
    pub block_size: usize,
    /// L: the most drafts prompt lookup proposes for a pass (0: none).
    #[serde(default)]
    pub lookup: usize,
    /// The extra cost of one more position in a pass, relative to a one-position pass, for
    /// the budget; None: fitted to this call's passes as they run. 0 makes positions free:
    /// every slot and every draft offered is sent.
    #[serde(default)]
    pub cost: Option<f64>,
    /// The most alternative positions a pass adds beside its main chain of drafts, as a
    /// draft tree (`tree.rs`; 0: a chain). The budget sends them only while they pay.
    #[serde(default)]
    pub tree: usize,
}

impl Default for VerifyDecoder {
    /// K = 2: on the models measured (docs/results.md) drafts past the second slot are
    /// rarely accepted, and every mask slot costs compute. Lookup up to 8 drafts beside
    /// them: the budget sends them only where the text repeats and they stand.
    fn default() -> Self {
        Self::with_lookup(2, DEFAULT_LOOKUP)
    }
}

impl VerifyDecoder {
    /// K `[MASK]` slots, no lookup.
    pub fn masks(block_size: usize) -> Self {
        Self {
            block_size,
            lookup: 0,
            cost: None,
            tree: 0,
        }
    }

    /// K `[MASK]` slots and up to L lookup drafts, the cost measured.
    pub fn with_lookup(block_size: usize, lookup: usize) -> Self {
        Self {
            lookup,
            ..Self::masks(block_size)
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.block_size < 1 && self.lookup < 1 {
            bail!("verify needs drafts: block size K ≥ 1 ([MASK] slots) or lookup L ≥ 1");
        }
        if self.tree > TREE_MAX / 2 {
            bail!(
                "verify tree must be at most {} positions, got {}",
                TREE_MAX / 2,
                self.tree
            );
        }
        if let Some(c) = self.cost {
            if !(c.is_finite() && (0.0..=10.0).contains(&c)) {
                bail!(
                    "verify cost must be a number in [0, 10] (extra cost of a position), got {c}"
                );
            }
        }
        Ok(())
    }

    /// The most drafts a pass verifies.
    fn most_drafts(&self) -> usize {
        self.block_size.max(self.lookup)
    }
}

/// Mask slots a pass feeds after `m` drafts: only for positions after the pass's AR token
/// that are still within the row's `room`.
fn masks(k: usize, room: usize, m: usize) -> usize {
    k.min(room.saturating_sub(m + 1))
}

/// A draft drawn from `logits` (greedy: the pick itself).
fn propose(logits: &[f32], context: &[&[u32]], opts: &GenOptions, rng: &mut impl Rng) -> Draft {
    let banned = [opts.mask_id];
    if opts.sampling.is_greedy() {
        let (token, conf) = opts.sampling.pick(logits, context, &banned, rng);
        return Draft {
            token,
            conf,
            dist: None,
            source: DraftSource::Mask,
            alts: Vec::new(),
        };
    }
    let dist = opts.sampling.distribution(logits, context, &banned);
    let (token, p) = draw(&dist, rng);
    Draft {
        token,
        conf: p as f32,
        dist: Some(dist),
        source: DraftSource::Mask,
        alts: Vec::new(),
    }
}

/// A row's draft records, and where its current pass's drafts came from.
#[derive(Default)]
struct Plan {
    lookup: LookupPlan,
    masks: MaskPlan,
    tree: TreePlan,
    source: Option<DraftSource>,
    /// Whether this pass's tree has alternatives beside the main chain.
    branched: bool,
    /// The main-chain draft whose failure this pass's rescue block covers.
    rescue: Option<usize>,
}

impl Plan {
    /// After a pass that checked `checked` of its drafts, the first `stood` standing.
    fn record(&mut self, checked: usize, stood: usize) {
        match self.source {
            Some(DraftSource::Lookup) => self.lookup.record.record(checked, stood),
            Some(DraftSource::Mask) => self.masks.record.record(checked, stood),
            None => {}
        }
    }

    /// The main chain's record.
    fn main(&self) -> &Budget {
        match self.source {
            Some(DraftSource::Lookup) => &self.lookup.record,
            _ => &self.masks.record,
        }
    }
}

/// A lookup continuation as drafts: certain guesses (under sampling q is one-hot, so the
/// check accepts with probability p(token) and otherwise draws from p without it).
fn looked_up(found: &[u32], opts: &GenOptions) -> Vec<Draft> {
    let dist = |t: u32| (!opts.sampling.is_greedy()).then(|| vec![(t, 1.0)]);
    let draft = |&token: &u32| Draft {
        token,
        conf: 1.0,
        dist: dist(token),
        source: DraftSource::Lookup,
        alts: Vec::new(),
    };
    found.iter().map(draft).collect()
}

/// Before a pass: the row's drafts, from the source the budget expects to commit more tokens
/// per cost (the last pass's `[MASK]` slots, already in the window, or the text's lookup
/// continuation), cut to the length that pays; then the `[MASK]` slots that pay, for the
/// positions after the pass's AR token; then, with a tree, the alternatives that pay.
fn open(
    row: &mut RowState<Slot>,
    prompt: &[u32],
    d: &VerifyDecoder,
    plan: &mut Plan,
    slope: f64,
    opts: &GenOptions,
) {
    let room = row.room(opts);
    let k = plan.masks.slots(d.block_size, slope);
    let rate = |b: &Budget, m: usize| b.expected(m) / (1.0 + slope * (m + k) as f64);
    row.window.truncate(d.block_size.min(room));
    let mut sent = plan.masks.drafts(row.window.len(), k, slope);
    plan.source = (sent > 0).then_some(DraftSource::Mask);
    // The mask drafts the main chain does not take, and lookup's continuations.
    let mut spare: Vec<Draft> = Vec::new();
    let text = [prompt, row.progress.tokens.as_slice()];
    let wanted = if d.tree > 0 { 2 } else { 1 };
    let mut found = match d.lookup {
        0 => Vec::new(),
        l => lookup::continuations(&text, l.min(room), wanted),
    };
    if let Some(first) = found.first() {
        let (m, probe) = plan.lookup.drafts(first.len(), k, slope);
        let better = || rate(&plan.lookup.record, m) > rate(&plan.masks.record, sent);
        if m > 0 && (sent == 0 || probe || better()) {
            let masks = std::mem::take(&mut row.window);
            spare.extend(masks.into_iter().filter_map(|s| match s {
                Slot::Draft(d) => Some(d),
                _ => None,
            }));
            let drafts = looked_up(&found.remove(0), opts);
            row.window.extend(drafts.into_iter().map(Slot::Draft));
            (sent, plan.source) = (m, Some(DraftSource::Lookup));
        }
    }
    row.window.truncate(sent);
    row.window
        .extend(std::iter::repeat_with(|| Slot::Mask).take(masks(k, room, sent)));
    (plan.branched, plan.rescue) = (false, None);
    if d.tree == 0 || sent == 0 {
        return;
    }
    // A rescue block where the main chain most likely fails, when the drafts it makes for
    // the next pass are worth its positions.
    let (j, miss) = plan.main().likeliest_miss(sent);
    let n = masks(k, room, j);
    let fits = row.pending.len() + row.window.len() + n <= TREE_MAX;
    if n > 0 && fits && miss * (plan.masks.record.expected(n) - 1.0) >= slope * n as f64 {
        let mut after = j.checked_sub(1);
        for _ in 0..n {
            row.window.push(Slot::Rescue { after });
            after = Some(row.window.len() - 1);
        }
        plan.rescue = Some(j);
    }
    // A tree: the other source's chains beside the main one, then the runners-up of the
    // first mask draft, while the tree fits and the budget says they pay.
    let first = row.window.first().and_then(Slot::draft);
    let singles: Vec<Draft> = first
        .into_iter()
        .chain(spare.first())
        .flat_map(|d| d.alts.iter().map(|&t| looked_up(&[t], opts).remove(0)))
        .map(|a| Draft {
            conf: 0.0,
            source: DraftSource::Mask,
            ..a
        })
        .collect();
    let mut chains: Vec<Vec<Draft>> = found.iter().map(|f| looked_up(f, opts)).collect();
    if !spare.is_empty() {
        chains.insert(0, spare);
    }
    let fits = TREE_MAX.saturating_sub(row.pending.len() + row.window.len());
    let offered = d.tree.min(fits);
    let nodes: usize = chains.iter().map(Vec::len).sum::<usize>() + singles.len();
    if plan
        .tree
        .send(offered.min(nodes), plan.main().first_fails(), slope)
    {
        tree::grow(&mut row.window, chains, singles, offered, room);
        plan.branched = row.window.iter().any(|s| matches!(s, Slot::Alt { .. }));
    }
}

/// The next pass's drafts, into `next`: what this pass's `[MASK]` slots at window entries
/// `slots` predicted for the positions after the `kept` tokens (each from the logits after
/// it), the first with its `alts` runners-up for a tree.
#[allow(clippy::too_many_arguments)]
fn propose_next(
    row: &RowState<Slot>,
    logits: &RowLogits,
    prompt: &[u32],
    opts: &GenOptions,
    rng: &mut Pcg64,
    kept: &[u32],
    slots: &[usize],
    alts: usize,
    next: &mut Vec<Slot>,
) {
    for (s, &e) in slots.iter().enumerate() {
        let l = logits.after(Some(e)).expect("the mask slots are fed");
        let context = [prompt, row.progress.tokens.as_slice(), kept];
        let mut draft = propose(l, &context, opts, rng);
        if s == 0 && alts > 0 {
            draft.alts = tree::runners_up(l, draft.token, opts.mask_id, alts);
        }
        next.push(Slot::Draft(draft));
    }
}

/// The window entries whose predictions are the next pass's drafts: the `[MASK]` slots
/// after the main chain when it all stood (`fresh`), the rescue block when the main chain
/// failed where it stands in, none otherwise.
fn next_slots(
    window: &[Slot],
    fresh: bool,
    rescue: Option<usize>,
    path: &[usize],
    kept: &[u32],
) -> Vec<usize> {
    let of = |want: fn(&Slot) -> bool| -> Vec<usize> {
        window
            .iter()
            .enumerate()
            .filter(|(_, s)| want(s))
            .map(|(e, _)| e)
            .collect()
    };
    if fresh {
        return of(|s| matches!(s, Slot::Mask));
    }
    // The walk took the main chain up to draft j, which failed: kept is those drafts and
    // AR's own token instead of draft j.
    let failed_at = |j: usize| {
        on_main(path) == j && path.len() == j && kept.len() == j + 1 && main_drafts(window) > j
    };
    match rescue {
        Some(j) if failed_at(j) => of(|s| matches!(s, Slot::Rescue { .. })),
        _ => Vec::new(),
    }
}

impl Decoder for VerifyDecoder {
    fn name(&self) -> &'static str {
        "verify"
    }

    fn fits(&self, objective: ObjectiveKind) -> bool {
        // Drafts from [MASK] slots need CARD, trained to predict from masked context; lookup
        // alone (K = 0) suits any causal model.
        objective == ObjectiveKind::Card || (objective.is_causal() && self.block_size == 0)
    }

    fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        on_step: &mut dyn FnMut(&StepTrace),
    ) -> Result<Generation> {
        self.validate()?;
        // More slots than new tokens cannot be used (and would only size buffers).
        let cap = opts.max_new_tokens.max(1);
        let d = VerifyDecoder {
            block_size: self.block_size.min(cap),
            lookup: self.lookup.min(cap),
            cost: self.cost,
            tree: self.tree,
        };
        let window = d.most_drafts() + d.block_size + d.tree;
        // The most a pass feeds one row: its pending token and window, and with a tree also
        // the tokens of a branch that stood (fed again, up to `tree`) and a rescue block (up
        // to K). Candle's cache needs that room past the longest row, finished rows included.
        let widest = window + 1 + if d.tree > 0 { d.block_size + d.tree } else { 0 };
        let (mut batch, mut rngs) = Batch::start(model, prompts, opts, widest)?;
        let mut rows: Vec<RowState<Slot>> = prompts
            .iter()
            .map(|p| RowState::new(p, opts, window))
            .collect();
        // Buffers reused by every pass: a pass's tokens, and the next pass's drafts.
        let (mut kept, mut next) = (Vec::with_capacity(window + 1), Vec::with_capacity(window));
        let mut path = Vec::with_capacity(window);
        let mut trace = StepTrace::reused(window + 1);
        let mut plans: Vec<Plan> = rows.iter().map(|_| Plan::default()).collect();
        let mut costs = PassCost::default();
        while rows.iter().any(|r| !r.progress.done) {
            let live = rows.iter().filter(|r| !r.progress.done).count();
            let slope = d.cost.unwrap_or_else(|| costs.slope(live));
            for ((row, prompt), plan) in rows.iter_mut().zip(prompts).zip(&mut plans) {
                if !row.progress.done {
                    open(row, prompt, &d, plan, slope, opts);
                }
            }
            let fed = rows.iter_mut().map(|row| {
                let n = row.window.len();
                (row, n)
            });
            let (before, clock) = (batch.fed(), Instant::now());
            batch.pass(fed, opts.mask_id)?;
            // The first pass reads the prompts: a prefill, not a decoding pass.
            if batch.forwards() > 1 {
                costs.observe(batch.fed() - before, clock.elapsed().as_secs_f64());
            }
            for (r, (row, plan)) in rows.iter_mut().zip(&mut plans).enumerate() {
                if row.progress.done {
                    continue;
                }
                trace.start(r, batch.forwards(), 1);
                let (logits, prompt, rng) = (batch.logits(r), &prompts[r], &mut rngs[r]);
                let (kept, path) = (&mut kept, &mut path);
                let fresh = walk(row, &logits, prompt, opts, rng, kept, path, &mut trace);
                let (checked, stood) = outcome(&row.window, path, kept);
                plan.record(checked, stood);
                if plan.branched && stood == 0 {
                    // The main chain's first draft failed: did an alternative stand?
                    plan.tree.record.record(1, usize::from(!path.is_empty()));
                }
                // After a rejection the next pass drafts afresh from masks right after the
                // committed text.
                next.clear();
                let ends = kept.last() == Some(&opts.eos_id);
                let slots = next_slots(&row.window, fresh, plan.rescue, path, kept);
                if !ends && !slots.is_empty() {
                    let alts = d.tree.min(MAX_RUNNERS_UP);
                    propose_next(
                        row, &logits, prompt, opts, rng, kept, &slots, alts, &mut next,
                    );
                }
                let after = row.first() + kept.len();
                let drafts = next.iter().filter_map(Slot::draft).enumerate();
                let slots = drafts.map(|(j, d)| SlotTrace::new(after + j, d.token, d.conf, true));
                trace.slots.extend(slots);
                on_step(&trace);
                // The main chain's drafts that stood keep their keys/values; a branch's and
                // AR's token are fed again by the next pass.
                let cached = on_main(path).min(kept.len() - 1);
                batch.keep(r, cached);
                std::mem::swap(&mut row.window, &mut next);
                row.commit(r, kept, cached, opts);
            }
        }
        let rows = rows.into_iter().map(|r| r.progress).collect();
        Ok(batch.finish(rows, prompts))
    }
}
