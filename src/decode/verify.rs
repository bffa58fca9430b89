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
//! The cache keeps the committed prefix and the accepted drafts; the rejected tail, the
//! masks and the unaccepted drafts are scratch, rolled back after every pass.

use super::sampling::{draw, Dist};
use super::{Decoder, GenOptions, Generation, Progress, SlotTrace, Start, StepTrace};
use crate::config::ObjectiveKind;
use crate::model::Transformer;
use anyhow::{bail, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyDecoder {
    /// K: `[MASK]` slots per pass, and the most drafts a pass verifies.
    pub block_size: usize,
}

impl Default for VerifyDecoder {
    /// K = 2: on the models measured (docs/results.md) drafts past the second slot are
    /// rarely accepted, and every mask slot costs compute.
    fn default() -> Self {
        Self { block_size: 2 }
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
}

struct Row {
    progress: Progress,
    /// Committed tokens whose keys/values are not cached yet (the prompt, then AR's token).
    pending: Vec<u32>,
    drafts: Vec<Draft>,
}

impl VerifyDecoder {
    pub fn validate(&self) -> Result<()> {
        if self.block_size < 1 {
            bail!("block size K must be at least 1");
        }
        Ok(())
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
        };
    }
    let dist = opts.sampling.distribution(logits, context, &banned);
    let (token, p) = draw(&dist, rng);
    Draft {
        token,
        conf: p as f32,
        dist: Some(dist),
    }
}

impl Decoder for VerifyDecoder {
    fn name(&self) -> &'static str {
        "verify"
    }

    fn fits(&self, objective: ObjectiveKind) -> bool {
        // Drafts come from [MASK] slots: only CARD is trained to predict from masked context.
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
        // More slots than new tokens cannot be used (and would only size buffers).
        let k = self.block_size.min(opts.max_new_tokens.max(1));
        let mut session = begin.session(model, opts, b, 2 * k + 1)?;
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
                drafts: Vec::with_capacity(k),
            })
            .collect();
        let mut forwards = 0;
        let mut inputs: Vec<Vec<u32>> = (0..b).map(|_| Vec::new()).collect();
        let mut before: Vec<usize> = Vec::with_capacity(b);
        // Buffers reused by every pass: a pass's tokens, and the next pass's drafts.
        let mut kept: Vec<u32> = Vec::with_capacity(k + 1);
        let mut next: Vec<Draft> = Vec::with_capacity(k);
        let mut trace = StepTrace {
            row: 0,
            forward: 0,
            step: 1,
            slots: Vec::with_capacity(k),
            committed: Vec::with_capacity(k + 1),
            rejected: Vec::with_capacity(1),
        };
        while rows.iter().any(|r| !r.progress.done) {
            for (input, row) in inputs.iter_mut().zip(&mut rows) {
                input.clear();
                if row.progress.done {
                    continue;
                }
                // Drafts only for positions within the budget.
                let room = opts.max_new_tokens - row.progress.tokens.len();
                row.drafts.truncate(k.min(room));
                input.extend_from_slice(&row.pending);
                input.extend(row.drafts.iter().map(|d| d.token));
                input.extend(std::iter::repeat_n(
                    opts.mask_id,
                    masks(k, room, row.drafts.len()),
                ));
            }
            before.clear();
            before.extend_from_slice(session.lens());
            session.forward(&inputs)?;
            forwards += 1;
            for (r, row) in rows.iter_mut().enumerate() {
                if row.progress.done {
                    continue;
                }
                let m = row.drafts.len();
                let p = row.pending.len();
                row.progress.forwards += 1;
                trace.committed.clear();
                trace.rejected.clear();
                let first = row.progress.tokens.len();
                let room = opts.max_new_tokens - first;
                // Walk the drafts: logits at fed index p-1+i predict draft i. `kept` holds
                // the tokens this pass commits; they are pushed after the trace, so a stop
                // hook runs after the step it is about, as in the other decoders.
                kept.clear();
                let mut all_stood = false;
                for i in 0..=m {
                    let l = session.logits(r, p - 1 + i);
                    let context = [prompts[r].as_slice(), &row.progress.tokens, &kept];
                    let outcome = match row.drafts.get(i) {
                        Some(d) => check(d, l, &context, opts, &mut rngs[r]),
                        None => {
                            // Past the last draft: AR's own token.
                            all_stood = true;
                            let (t, c) =
                                opts.sampling
                                    .pick(l, &context, &[opts.mask_id], &mut rngs[r]);
                            Check::Replace(t, c)
                        }
                    };
                    let slot = |token, confidence, masked| SlotTrace {
                        pos: first + i,
                        token,
                        confidence,
                        masked,
                    };
                    let (token, conf, ends) = match outcome {
                        Check::Accept => (row.drafts[i].token, row.drafts[i].conf, false),
                        Check::Replace(t, c) => {
                            if let Some(d) = row.drafts.get(i) {
                                trace.rejected.push(slot(d.token, d.conf, true));
                            }
                            (t, c, true)
                        }
                    };
                    trace.committed.push(slot(token, conf, false));
                    kept.push(token);
                    // AR's token (after a rejection or past the drafts), end of text, or the
                    // budget: the pass commits no more.
                    if ends || token == opts.eos_id || kept.len() == room {
                        break;
                    }
                }
                // The mask slots predicted the positions after AR's token only if every draft
                // before them stood; after a rejection the next pass drafts afresh from masks
                // right after the committed text.
                next.clear();
                if all_stood && kept.len() == m + 1 && kept[m] != opts.eos_id {
                    for s in 0..masks(k, room, m) {
                        let l = session.logits(r, p + m + s);
                        let context = [prompts[r].as_slice(), &row.progress.tokens, &kept];
                        next.push(propose(l, &context, opts, &mut rngs[r]));
                    }
                }
                (trace.row, trace.forward) = (r, forwards);
                trace.slots.clear();
                let after = first + kept.len();
                trace
                    .slots
                    .extend(next.iter().enumerate().map(|(j, d)| SlotTrace {
                        pos: after + j,
                        token: d.token,
                        confidence: d.conf,
                        masked: true,
                    }));
                on_step(&trace);
                // Every kept token but the last is a draft that stood: its keys/values stay.
                session.truncate_row(r, before[r] + p + kept.len() - 1);
                row.pending.clear();
                std::mem::swap(&mut row.drafts, &mut next);
                for &tok in &kept {
                    if !row.progress.push(r, tok, opts) || row.progress.done {
                        break;
                    }
                }
                if !row.progress.done {
                    row.pending.push(*kept.last().expect("every pass commits"));
                }
            }
        }
        let rows = rows.into_iter().map(|r| r.progress).collect();
        Ok(Generation::from_rows(
            rows,
            forwards,
            session.fed(),
            prompts,
            start,
        ))
    }
}
