//! Draft trees for the verifier: alternatives checked in the same pass as the main chain of
//! drafts, each a branch of the pass's tree (`model::Tree`: a token sees the committed text,
//! its ancestors and itself, at the position after its parent).
//!
//! The alternatives sit after the window's `[MASK]` slots, so the main chain keeps the cache
//! slots it would have in a chain pass. They are:
//! - the other source's drafts as a chain off the committed text (the mask slots' drafts
//!   beside a lookup chain, or the lookup continuation beside mask drafts), and a second
//!   lookup continuation (an earlier occurrence that went on differently);
//! - the runners-up of the first mask draft, one token each.
//!
//! The walk takes, at each node, the child AR would have taken: under greedy the one whose
//! token is AR's pick; under sampling by recursive rejection over the children in order (a
//! child drawn from q is accepted with probability min(1, r(x)/q(x)), and on rejection the
//! target r becomes the normalised residual max(0, r − q)), so the committed token is
//! distributed as AR's. Only the main chain's prefix keeps its keys/values: tokens accepted on
//! a branch are fed again, as committed text, by the next pass.

use super::sampling::{draw, Dist};
use super::window::{Entry, RowLogits, RowState};
use super::{DraftSource, GenOptions, SlotTrace, StepTrace};
use rand::Rng;
use rand_pcg::Pcg64;

/// A guessed token for a position after the committed text.
#[derive(Clone)]
pub(super) struct Draft {
    pub token: u32,
    /// Its probability under the distribution it was drawn from (0 for a runner-up).
    pub conf: f32,
    /// That distribution (sampling only: the acceptance rule needs it; None there is a
    /// certain guess).
    pub dist: Option<Dist>,
    pub source: DraftSource,
    /// The runners-up of a first mask draft, for a draft tree (empty otherwise).
    pub alts: Vec<u32>,
}

/// A window entry: a draft of the main chain, fed as if it were text, a `[MASK]` slot
/// predicting the position after it, or an alternative draft on a branch of a tree after
/// window entry `after` (None: the committed text).
pub(super) enum Slot {
    Draft(Draft),
    Mask,
    Alt {
        draft: Draft,
        after: Option<usize>,
    },
    /// A `[MASK]` slot on a branch: the first of a block after window entry `after` that
    /// stands for AR's token where the main chain's next draft fails, so that a pass which
    /// rejects still drafts the next one (TiDAR-style; `tree.rs`).
    Rescue {
        after: Option<usize>,
    },
}

impl Entry for Slot {
    fn token(&self) -> Option<u32> {
        self.draft().map(|d| d.token)
    }

    fn branch(&self) -> Option<Option<usize>> {
        match self {
            Slot::Alt { after, .. } | Slot::Rescue { after } => Some(*after),
            _ => None,
        }
    }
}

impl Draft {
    /// A guess that was not drawn (greedy, lookup, a runner-up): no distribution, or a
    /// one-hot one. A certain guess of a token a sibling already guesses adds nothing: if
    /// the sibling fails, the target left has no mass on it.
    fn certain(&self) -> bool {
        self.dist.as_ref().is_none_or(|q| q.len() == 1)
    }
}

impl Slot {
    pub(super) fn draft(&self) -> Option<&Draft> {
        match self {
            Slot::Draft(d) | Slot::Alt { draft: d, .. } => Some(d),
            Slot::Mask | Slot::Rescue { .. } => None,
        }
    }
}

/// Entries of `window` that are drafts following entry `node` (None: the committed text):
/// its chain successor first, then its branches in window order.
pub(super) fn children(window: &[Slot], node: Option<usize>) -> Vec<usize> {
    let next = node.map_or(0, |n| n + 1);
    let on_chain = node.is_none_or(|n| matches!(window[n], Slot::Draft(_)));
    let chain = on_chain && matches!(window.get(next), Some(Slot::Draft(_)));
    let branches = window.iter().enumerate().filter_map(|(e, s)| match s {
        Slot::Alt { after, .. } if *after == node => Some(e),
        _ => None,
    });
    chain.then_some(next).into_iter().chain(branches).collect()
}

/// The outcome of checking a node's children against AR's distribution after it.
pub(super) enum Check {
    /// The k-th child stands.
    Accept(usize),
    /// None stands: commit this token instead.
    Replace(u32, f32),
}

/// Greedy: the child whose token is AR's pick. Sampling: recursive rejection over the
/// children in order (see the module's note); a child without a distribution is a certain
/// guess (one-hot).
pub(super) fn check(
    drafts: &[&Draft],
    logits: &[f32],
    context: &[&[u32]],
    opts: &GenOptions,
    rng: &mut impl Rng,
) -> Check {
    let banned = [opts.mask_id];
    if opts.sampling.is_greedy() {
        let (tok, conf) = opts.sampling.pick(logits, context, &banned, rng);
        return match drafts.iter().position(|d| d.token == tok) {
            Some(k) => Check::Accept(k),
            None => Check::Replace(tok, conf),
        };
    }
    let p = opts.sampling.distribution(logits, context, &banned);
    let prob = |d: &Dist, t: u32| d.iter().find(|x| x.0 == t).map_or(0.0, |x| x.1);
    let mut target = p.clone();
    for (k, draft) in drafts.iter().enumerate() {
        let one_hot;
        let q = match &draft.dist {
            Some(q) => q,
            None => {
                one_hot = vec![(draft.token, 1.0)];
                &one_hot
            }
        };
        let (rd, qd) = (prob(&target, draft.token), prob(q, draft.token));
        if qd > 0.0 && rng.random::<f64>() * qd < rd {
            return Check::Accept(k);
        }
        let residual: Dist = target
            .iter()
            .map(|&(t, pt)| (t, (pt - prob(q, t)).max(0.0)))
            .filter(|x| x.1 > 0.0)
            .collect();
        // r == q up to rounding leaves no residual mass: then r itself stays the target.
        let mass: f64 = residual.iter().map(|x| x.1).sum();
        if mass > 1e-12 {
            target = residual.into_iter().map(|(t, x)| (t, x / mass)).collect();
        }
    }
    let (tok, _) = draw(&target, rng);
    Check::Replace(tok, prob(&p, tok) as f32)
}

/// The `count` most likely tokens of `logits` other than `not` and `banned`, most likely
/// first: the runners-up of a mask slot's pick.
pub(super) fn runners_up(logits: &[f32], not: u32, banned: u32, count: usize) -> Vec<u32> {
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(count + 1);
    for (t, &x) in logits.iter().enumerate() {
        let t = t as u32;
        if t == not || t == banned || top.len() == count && x <= top[count - 1].0 {
            continue;
        }
        let at = top.partition_point(|&(y, _)| y >= x);
        top.insert(at, (x, t));
        top.truncate(count);
    }
    top.into_iter().map(|(_, t)| t).collect()
}

/// Alternatives to add after the window's masks, at most `nodes` positions: `chains` (each
/// off the committed text, cut so they end within `room`) and then `singles`, skipping a
/// certain guess whose token some earlier first-level draft already guesses. A drawn draft
/// is never skipped for its value: recursive rejection needs it distributed as its q, and
/// as a repeat it simply fails (the target left has no mass on its token).
pub(super) fn grow(
    window: &mut Vec<Slot>,
    chains: Vec<Vec<Draft>>,
    singles: Vec<Draft>,
    nodes: usize,
    room: usize,
) {
    let mut left = nodes;
    let mut firsts: Vec<u32> = children(window, None)
        .iter()
        .filter_map(|&e| window[e].draft().map(|d| d.token))
        .collect();
    let chains = chains
        .into_iter()
        .chain(singles.into_iter().map(|d| vec![d]));
    for chain in chains {
        let Some(head) = chain.first() else { continue };
        if left == 0 || head.certain() && firsts.contains(&head.token) {
            continue;
        }
        firsts.push(head.token);
        let mut after = None;
        for draft in chain.into_iter().take(left.min(room)) {
            window.push(Slot::Alt { draft, after });
            after = Some(window.len() - 1);
            left -= 1;
        }
    }
}

/// The main chain's drafts (leading [`Slot::Draft`]s) of a window.
pub(super) fn main_drafts(window: &[Slot]) -> usize {
    window
        .iter()
        .take_while(|s| matches!(s, Slot::Draft(_)))
        .count()
}

/// Main-chain drafts a pass checked and, of those, how many stood: the walk's path kept the
/// first `stood` (its main-chain prefix), and checked the one after them if it got there.
pub(super) fn outcome(window: &[Slot], path: &[usize], kept: &[u32]) -> (usize, usize) {
    let stood = on_main(path);
    (main_drafts(window).min(stood + 1).min(kept.len()), stood)
}

/// How many of a path's first entries are the main chain's (entry i at step i).
pub(super) fn on_main(path: &[usize]) -> usize {
    path.iter()
        .enumerate()
        .take_while(|(i, &e)| *i == e)
        .count()
}

/// After a pass: walk the row's draft tree from the committed text, at each node taking the
/// child AR would have taken (`tree::check`), into `kept`: the drafts that stand, then AR's
/// own token (after a rejection or past the drafts), ending early at end of text or the
/// budget; `path` gets the window entries taken, `trace` the committed and rejected slots.
/// Returns whether the whole main chain stood and AR's token ended no text: only then did
/// the `[MASK]` slots predict from the right context.
#[allow(clippy::too_many_arguments)]
pub(super) fn walk(
    row: &RowState<Slot>,
    logits: &RowLogits,
    prompt: &[u32],
    opts: &GenOptions,
    rng: &mut Pcg64,
    kept: &mut Vec<u32>,
    path: &mut Vec<usize>,
    trace: &mut StepTrace,
) -> bool {
    let (first, room) = (row.first(), row.room(opts));
    kept.clear();
    path.clear();
    let mut node = None;
    loop {
        let l = logits
            .after(node)
            .expect("every pass feeds a pending token");
        let context = [prompt, row.progress.tokens.as_slice(), kept.as_slice()];
        let children = children(&row.window, node);
        let drafts: Vec<&Draft> = children
            .iter()
            .filter_map(|&e| row.window[e].draft())
            .collect();
        let at = first + kept.len();
        let (token, conf, ends, from) = if drafts.is_empty() {
            // Past the last draft: AR's own token.
            let (t, c) = opts.sampling.pick(l, &context, &[opts.mask_id], rng);
            (t, c, true, None)
        } else {
            match check(&drafts, l, &context, opts, rng) {
                Check::Accept(k) => {
                    path.push(children[k]);
                    let d = drafts[k];
                    (d.token, d.conf, false, Some(d.source))
                }
                Check::Replace(t, c) => {
                    for d in &drafts {
                        let rejected = SlotTrace::new(at, d.token, d.conf, true);
                        trace.rejected.push(rejected.drafted_by(Some(d.source)));
                    }
                    (t, c, true, None)
                }
            }
        };
        let branch = from.is_some() && on_main(path) < path.len();
        let committed = SlotTrace::new(at, token, conf, false).drafted_by(from);
        trace.committed.push(committed.on_branch(branch));
        kept.push(token);
        // AR's token (after a rejection or past the drafts), end of text, or the budget: the
        // pass commits no more.
        if ends || token == opts.eos_id || kept.len() == room {
            let whole = on_main(path) == path.len() && path.len() == main_drafts(&row.window);
            return drafts.is_empty() && whole && token != opts.eos_id;
        }
        node = path.last().copied();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(token: u32) -> Draft {
        Draft {
            token,
            conf: 1.0,
            dist: None,
            source: DraftSource::Lookup,
            alts: Vec::new(),
        }
    }

    #[test]
    fn children_follow_the_chain_then_the_branches() {
        // Main chain 5 6, one mask, then a branch 7 → 8 off the text and 9 off the text.
        let mut w = vec![Slot::Draft(draft(5)), Slot::Draft(draft(6)), Slot::Mask];
        grow(
            &mut w,
            vec![vec![draft(7), draft(8)]],
            vec![draft(9)],
            8,
            10,
        );
        assert_eq!(children(&w, None), vec![0, 3, 5]);
        assert_eq!(children(&w, Some(0)), vec![1]);
        assert_eq!(children(&w, Some(1)), Vec::<usize>::new());
        assert_eq!(children(&w, Some(3)), vec![4]);
        // A guess already made at the first level is not sent twice; the node cap holds.
        let mut w = vec![Slot::Draft(draft(5))];
        grow(
            &mut w,
            vec![vec![draft(5), draft(1)]],
            vec![draft(6), draft(7)],
            1,
            10,
        );
        assert_eq!(children(&w, None), vec![0, 1]);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn runners_up_are_the_next_most_likely() {
        let l = [0.1, 3.0, 2.0, 5.0, 4.0, -1.0];
        assert_eq!(runners_up(&l, 3, 0, 2), vec![4, 1]);
        assert_eq!(runners_up(&l, 3, 4, 3), vec![1, 2, 0]);
    }

    /// Sampling at temperature 1 with `mask` banned.
    fn sampling(mask: u32) -> GenOptions<'static> {
        GenOptions {
            max_new_tokens: 1,
            eos_id: u32::MAX,
            mask_id: mask,
            sampling: crate::decode::Sampling {
                temperature: 1.0,
                ..Default::default()
            },
            seed: 0,
            stop: None,
            backend: None,
        }
    }

    /// Commits 200,000 tokens with `one` (a pass's check, from the rng) and asserts their
    /// frequencies are `p`'s within 0.006 (standard error ≈ 0.001), no other token included.
    fn assert_commits(p: &Dist, seed: u64, mut one: impl FnMut(&mut Pcg64) -> u32) {
        use rand::SeedableRng;
        let mut rng = Pcg64::seed_from_u64(seed);
        let n = 200_000;
        let mut counts = [0f64; 16];
        for _ in 0..n {
            counts[one(&mut rng) as usize] += 1.0 / n as f64;
        }
        for (t, &c) in counts.iter().enumerate() {
            let pt = p.iter().find(|x| x.0 == t as u32).map_or(0.0, |x| x.1);
            assert!((c - pt).abs() < 0.006, "token {t}: {c} against {pt}");
        }
    }

    #[test]
    fn recursive_rejection_commits_tokens_distributed_as_ar() {
        // AR's distribution over tokens 0..5 (5 is [MASK], banned).
        let logits = [1.0, 0.5, 2.0, 0.0, -1.0, 3.0];
        let opts = sampling(5);
        let p = opts.sampling.distribution(&logits, &[], &[5]);
        let q: Dist = vec![(0, 0.7), (1, 0.3)];
        // A draft drawn from q, then a certain guess of token 2 beside it. Checking the
        // guess against p instead of the residual after the first rejection commits token 2
        // with chance ≈ 0.38, not 0.56.
        assert_commits(&p, 3, |rng| {
            let (token, _) = draw(&q, rng);
            let first = Draft {
                dist: Some(q.clone()),
                ..draft(token)
            };
            match check(&[&first, &draft(2)], &logits, &[], &opts, rng) {
                Check::Accept(0) => token,
                Check::Accept(_) => 2,
                Check::Replace(t, _) => t,
            }
        });
    }

    #[test]
    fn a_drawn_draft_is_checked_even_where_a_guess_took_its_token() {
        // AR: p = {0: .5, 1: .3, 2: .2} (3 is [MASK]). The main chain guesses 0 for certain
        // (lookup); beside it, a mask draft drawn from q = {0: .5, 1: .5}. Dropping the
        // drawn draft whenever it repeats the guess commits {.5, .4, .1}.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.0];
        let opts = sampling(3);
        let q: Dist = vec![(0, 0.5), (1, 0.5)];
        assert_commits(&vec![(0, 0.5), (1, 0.3), (2, 0.2)], 5, |rng| {
            let (token, _) = draw(&q, rng);
            let drawn = Draft {
                dist: Some(q.clone()),
                ..draft(token)
            };
            let mut w = vec![Slot::Draft(draft(0))];
            grow(&mut w, vec![vec![drawn]], Vec::new(), 4, 10);
            let first: Vec<&Draft> = children(&w, None)
                .into_iter()
                .filter_map(|e| w[e].draft())
                .collect();
            match check(&first, &logits, &[], &opts, rng) {
                Check::Accept(k) => first[k].token,
                Check::Replace(t, _) => t,
            }
        });
    }
}
