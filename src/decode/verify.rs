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

use super::budget::{Budget, LookupPlan, MaskPlan, PassCost};
use super::lookup;
use super::sampling::{draw, Dist};
use super::window::{Batch, Entry, RowLogits, RowState};
use super::{Decoder, DraftSource, GenOptions, Generation, SlotTrace, StepTrace};
use crate::config::ObjectiveKind;
use crate::model::Transformer;
use anyhow::{bail, Result};
use rand::Rng;
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The most lookup drafts a pass proposes when no L is given (the budget sends fewer where
/// they do not pay).
pub const DEFAULT_LOOKUP: usize = 8;

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
}

impl Default for VerifyDecoder {
    /// K = 2: on the models measured (docs/results.md) drafts past the second slot are
    /// rarely accepted, and every mask slot costs compute. Lookup up to 8 drafts beside
    /// them: the budget sends them only where the text repeats and they stand.
    fn default() -> Self {
        Self::with_lookup(2, DEFAULT_LOOKUP)
    }
}

/// A guessed token for a position after the committed text.
#[derive(Clone)]
struct Draft {
    token: u32,
    /// Its probability under the distribution it was drawn from.
    conf: f32,
    /// That distribution (sampling only: the acceptance rule needs it).
    dist: Option<Dist>,
    source: DraftSource,
}

/// A window entry: a draft, fed as if it were text, or a `[MASK]` slot predicting the
/// position after it.
enum Slot {
    Draft(Draft),
    Mask,
}

impl Entry for Slot {
    fn token(&self) -> Option<u32> {
        self.draft().map(|d| d.token)
    }
}

impl Slot {
    fn draft(&self) -> Option<&Draft> {
        match self {
            Slot::Draft(d) => Some(d),
            Slot::Mask => None,
        }
    }
}

impl VerifyDecoder {
    /// K `[MASK]` slots, no lookup.
    pub fn masks(block_size: usize) -> Self {
        Self {
            block_size,
            lookup: 0,
            cost: None,
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

/// The outcome of checking one draft against AR's distribution at its position.
enum Check {
    Accept,
    /// Rejected: commit this token instead.
    Replace(u32, f32),
}

/// Greedy: accept iff the draft is AR's pick. Sampling: accept with probability
/// min(1, p(d)/q(d)), else draw from the normalised residual max(0, p − q) — the standard
/// speculative sampling rule, whose output is distributed as p.
fn check(
    draft: &Draft,
    logits: &[f32],
    context: &[&[u32]],
    opts: &GenOptions,
    rng: &mut impl Rng,
) -> Check {
    let banned = [opts.mask_id];
    let Some(q) = &draft.dist else {
        let (tok, conf) = opts.sampling.pick(logits, context, &banned, rng);
        return if tok == draft.token {
            Check::Accept
        } else {
            Check::Replace(tok, conf)
        };
    };
    let p = opts.sampling.distribution(logits, context, &banned);
    let prob = |d: &Dist, t: u32| d.iter().find(|x| x.0 == t).map_or(0.0, |x| x.1);
    let (pd, qd) = (prob(&p, draft.token), prob(q, draft.token));
    if qd > 0.0 && rng.random::<f64>() * qd < pd {
        return Check::Accept;
    }
    let residual: Dist = p
        .iter()
        .map(|&(t, pt)| (t, (pt - prob(q, t)).max(0.0)))
        .filter(|x| x.1 > 0.0)
        .collect();
    // p == q up to rounding leaves no residual mass: then p itself is the residual.
    let (tok, _) = if residual.iter().map(|x| x.1).sum::<f64>() > 1e-12 {
        draw(&residual, rng)
    } else {
        draw(&p, rng)
    };
    Check::Replace(tok, prob(&p, tok) as f32)
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
        };
    }
    let dist = opts.sampling.distribution(logits, context, &banned);
    let (token, p) = draw(&dist, rng);
    Draft {
        token,
        conf: p as f32,
        dist: Some(dist),
        source: DraftSource::Mask,
    }
}

/// A row's draft records, and where its current pass's drafts came from.
#[derive(Default)]
struct Plan {
    lookup: LookupPlan,
    masks: MaskPlan,
    source: Option<DraftSource>,
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
}

/// Before a pass: the row's drafts, from the source the budget expects to commit more tokens
/// per cost (the last pass's `[MASK]` slots, already in the window, or the text's lookup
/// continuation), cut to the length that pays; then the `[MASK]` slots that pay, for the
/// positions after the pass's AR token.
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
    if d.lookup > 0 {
        let found = lookup::continuation(&[prompt, &row.progress.tokens], d.lookup.min(room));
        let (m, probe) = plan.lookup.drafts(found.len(), k, slope);
        let better = || rate(&plan.lookup.record, m) > rate(&plan.masks.record, sent);
        if m > 0 && (sent == 0 || probe || better()) {
            row.window.clear();
            row.window.extend(found.into_iter().map(|token| {
                // A certain guess: under sampling q is one-hot, so the check accepts with
                // probability p(token) and otherwise draws from p without it.
                let dist = (!opts.sampling.is_greedy()).then(|| vec![(token, 1.0)]);
                Slot::Draft(Draft {
                    token,
                    conf: 1.0,
                    dist,
                    source: DraftSource::Lookup,
                })
            }));
            (sent, plan.source) = (m, Some(DraftSource::Lookup));
        }
    }
    row.window.truncate(sent);
    row.window
        .extend(std::iter::repeat_with(|| Slot::Mask).take(masks(k, room, sent)));
}

/// Drafts a pass checked and, of those, how many stood: draft i was checked if the walk
/// reached position i, and stood if AR kept its token there.
fn outcome(window: &[Slot], kept: &[u32]) -> (usize, usize) {
    let drafts = window.iter().filter_map(Slot::draft).count();
    let stood = window
        .iter()
        .zip(kept)
        .take_while(|(s, &t)| s.token() == Some(t))
        .count();
    (drafts.min(kept.len()), stood.min(drafts))
}

/// After a pass: check the row's drafts left to right against AR's distribution at their
/// positions, into `kept`: the drafts that stand, then AR's own token (after a rejection or
/// past the drafts), ending early at end of text or the budget; `trace` gets the committed
/// and rejected slots. Returns whether every draft stood and AR's token ended no text: only
/// then did the `[MASK]` slots predict from the right context.
fn walk(
    row: &RowState<Slot>,
    logits: &RowLogits,
    prompt: &[u32],
    opts: &GenOptions,
    rng: &mut Pcg64,
    kept: &mut Vec<u32>,
    trace: &mut StepTrace,
) -> bool {
    let (first, room) = (row.first(), row.room(opts));
    kept.clear();
    for i in 0.. {
        let l = logits
            .predicting(i)
            .expect("every pass feeds a pending token");
        let context = [prompt, row.progress.tokens.as_slice(), kept.as_slice()];
        let draft = row.window.get(i).and_then(Slot::draft);
        let (token, conf, ends, from) = match draft {
            Some(d) => match check(d, l, &context, opts, rng) {
                Check::Accept => (d.token, d.conf, false, Some(d.source)),
                Check::Replace(t, c) => {
                    let rejected = SlotTrace::new(first + i, d.token, d.conf, true);
                    trace.rejected.push(rejected.drafted_by(Some(d.source)));
                    (t, c, true, None)
                }
            },
            None => {
                // Past the last draft: AR's own token.
                let (t, c) = opts.sampling.pick(l, &context, &[opts.mask_id], rng);
                (t, c, true, None)
            }
        };
        let committed = SlotTrace::new(first + i, token, conf, false).drafted_by(from);
        trace.committed.push(committed);
        kept.push(token);
        // AR's token (after a rejection or past the drafts), end of text, or the budget: the
        // pass commits no more.
        if ends || token == opts.eos_id || kept.len() == room {
            return draft.is_none() && token != opts.eos_id;
        }
    }
    unreachable!("the walk ends at AR's token, past the last draft at the latest")
}

/// The next pass's drafts, into `next`: what this pass's `[MASK]` slots predicted for the
/// positions after the `kept` tokens (slot s from the logits after window entry m+s).
fn propose_next(
    row: &RowState<Slot>,
    logits: &RowLogits,
    prompt: &[u32],
    opts: &GenOptions,
    rng: &mut Pcg64,
    kept: &[u32],
    next: &mut Vec<Slot>,
) {
    // The drafts come first; mask slot s predicts from the logits after entry m+s.
    let m = row.window.iter().filter_map(Slot::draft).count();
    for j in m + 1..=row.window.len() {
        let l = logits.predicting(j).expect("the mask slots are fed");
        let context = [prompt, row.progress.tokens.as_slice(), kept];
        next.push(Slot::Draft(propose(l, &context, opts, rng)));
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
        };
        let window = d.most_drafts() + d.block_size;
        let (mut batch, mut rngs) = Batch::start(model, prompts, opts, window + 1)?;
        let mut rows: Vec<RowState<Slot>> = prompts
            .iter()
            .map(|p| RowState::new(p, opts, window))
            .collect();
        // Buffers reused by every pass: a pass's tokens, and the next pass's drafts.
        let (mut kept, mut next) = (Vec::with_capacity(window + 1), Vec::with_capacity(window));
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
                let fresh = walk(row, &logits, prompt, opts, rng, &mut kept, &mut trace);
                let (checked, stood) = outcome(&row.window, &kept);
                plan.record(checked, stood);
                // After a rejection the next pass drafts afresh from masks right after the
                // committed text.
                next.clear();
                if fresh {
                    propose_next(row, &logits, prompt, opts, rng, &kept, &mut next);
                }
                let after = row.first() + kept.len();
                let drafts = next.iter().filter_map(Slot::draft).enumerate();
                let slots = drafts.map(|(j, d)| SlotTrace::new(after + j, d.token, d.conf, true));
                trace.slots.extend(slots);
                on_step(&trace);
                // Every kept token but the last is a draft that stood: its keys/values stay.
                let stood = kept.len() - 1;
                batch.keep(r, stood);
                std::mem::swap(&mut row.window, &mut next);
                row.commit(r, &kept, stood, opts);
            }
        }
        let rows = rows.into_iter().map(|r| r.progress).collect();
        Ok(batch.finish(rows, prompts))
    }
}
