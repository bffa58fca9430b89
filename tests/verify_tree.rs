//! Draft trees in the lossless decoder, on the briefly trained `tiny` CARD model: greedy
//! output equals AR greedy token for token for every source and tree size, batch and both
//! backends, with alternatives that actually stand and rescue blocks that draft after a
//! rejection; and under sampling, with several alternatives checked in a pass, the output
//! follows AR's distribution.

use card::decode::{ArDecoder, Decoder, GenOptions, Sampling, StepTrace, VerifyDecoder};
use card::model::Backend;
use std::collections::HashMap;

mod common;

use common::trained::{encode, fixture, opts, tok, total_variation};

/// A tree decoder that sends every alternative it has (positions cost nothing).
fn tree(k: usize, l: usize, nodes: usize) -> VerifyDecoder {
    VerifyDecoder {
        cost: Some(0.0),
        tree: nodes,
        ..VerifyDecoder::with_lookup(k, l)
    }
}

#[test]
fn greedy_tree_verification_is_ar_greedy() {
    let f = fixture();
    let prompts = encode(&[
        "Alice was beginning",
        "The Queen said to the King, and the Queen said",
        "'Off with",
        "the the the the the the",
        "a, b, c, d, a, b, e, a, b,",
    ]);
    let (mut branched, mut multi, mut rescued) = (0, 0, 0);
    for backend in [Backend::Host, Backend::Candle] {
        for max_new in [1, 9, 40] {
            let o = opts(max_new, Sampling::default(), backend);
            let ar = ArDecoder
                .generate(&f.plain, &prompts, &o, &mut |_| {})
                .unwrap();
            // Mask drafts with their runners-up; lookup beside them; lookup alone with a
            // second continuation; the budget's own slope.
            let measured = VerifyDecoder {
                tree: 4,
                ..VerifyDecoder::with_lookup(2, 4)
            };
            for d in [
                tree(1, 0, 1),
                tree(2, 0, 3),
                tree(2, 4, 6),
                tree(0, 6, 6),
                measured,
            ] {
                let mut steps: Vec<StepTrace> = Vec::new();
                let g = d
                    .generate(&f.plain, &prompts, &o, &mut |s| steps.push(s.clone()))
                    .unwrap();
                for (r, (a, v)) in ar.rows.iter().zip(&g.rows).enumerate() {
                    let what = format!("{backend:?} {d:?} len {max_new} row {r}");
                    assert_eq!(a.tokens, v.tokens, "{what}");
                    assert_eq!(a.finish, v.finish, "{what}");
                }
                let single = d
                    .generate(&f.plain, &prompts[4..5], &o, &mut |_| {})
                    .unwrap();
                assert_eq!(single.rows[0].tokens, g.rows[4].tokens);
                for s in &steps {
                    assert!(!s.committed.is_empty(), "every pass commits");
                    branched += s.committed.iter().filter(|c| c.branch).count();
                    multi += usize::from(s.rejected.len() > 1);
                    // A pass that rejected yet drafted the next: its rescue block.
                    rescued += usize::from(!s.rejected.is_empty() && !s.slots.is_empty());
                }
            }
        }
    }
    assert!(branched > 0, "no alternative ever stood");
    assert!(multi > 0, "no pass checked several alternatives at once");
    assert!(rescued > 0, "no pass drafted after a rejection");
}

/// The empirical distribution of the first two generated tokens.
fn pairs(rows: &[card::decode::RowOutput]) -> HashMap<(u32, u32), f64> {
    let mut out: HashMap<(u32, u32), f64> = HashMap::new();
    for r in rows {
        *out.entry((r.tokens[0], r.tokens[1])).or_default() += 1.0 / rows.len() as f64;
    }
    out
}

#[test]
fn tree_sampling_follows_ar_distribution() {
    let f = fixture();
    let s = Sampling {
        temperature: 1.0,
        top_k: 4,
        ..Sampling::default()
    };
    // A prompt that repeats, so lookup offers two continuations beside the mask drafts.
    let prompt = tok()
        .encode("the Queen, the King, the Queen, the King, the")
        .unwrap();
    let n = 3000;
    let rows = vec![prompt; n];
    let o = GenOptions {
        eos_id: u32::MAX,
        seed: 7,
        ..opts(2, s, Backend::Host)
    };
    let ar = pairs(
        &ArDecoder
            .generate(&f.plain, &rows, &o, &mut |_| {})
            .unwrap()
            .rows,
    );
    let (mut steps, mut multi) = (0, 0);
    let g = tree(2, 4, 6)
        .generate(&f.plain, &rows, &o, &mut |s| {
            steps += usize::from(s.committed.iter().any(|c| c.branch));
            multi += usize::from(s.rejected.len() > 1);
        })
        .unwrap();
    // This model rarely samples what lookup guesses here: the rule itself is checked with
    // alternatives that stand in `decode::tree`'s unit test.
    assert!(
        multi > 0,
        "no pass checked several alternatives (branched in {steps})"
    );
    // Two samples of 3000 over at most 16 outcomes: their TV is about 0.04 by noise alone.
    let tv = total_variation(&ar, &pairs(&g.rows));
    assert!(
        tv < 0.08,
        "TV between tree verification and AR sampling: {tv}"
    );
}

/// One-token prompts that progress unequally: a row that finished holds nearly all the
/// positions of the call while another still feeds a pass with a rescue block, alternatives
/// and a re-fed branch. The cache keeps room for that pass on both backends.
#[test]
fn short_ragged_rows_leave_room_for_tree_passes() {
    let f = fixture();
    let prompts: Vec<Vec<u32>> = encode(&["a", "the", "Alice", "Queen", "'", "and"])
        .into_iter()
        .map(|p| p[..1].to_vec())
        .collect();
    for backend in [Backend::Candle, Backend::Host] {
        let o = GenOptions {
            eos_id: u32::MAX,
            ..opts(48, Sampling::default(), backend)
        };
        let ar = ArDecoder
            .generate(&f.plain, &prompts, &o, &mut |_| {})
            .unwrap();
        for d in [tree(4, 0, 3), tree(2, 8, 8), tree(4, 8, 16)] {
            let what = format!("{backend:?} {d:?}");
            let g = d
                .generate(&f.plain, &prompts, &o, &mut |_| {})
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            for (a, v) in ar.rows.iter().zip(&g.rows) {
                assert_eq!(a.tokens, v.tokens, "{what}");
            }
        }
    }
}
