//! The lossless decoder on a briefly trained `tiny` CARD model: greedy output equals AR
//! greedy token for token (prompts, lengths, K, batches of ragged rows, both backends), a
//! cache that went through accept/reject cycles gives the logits of a full recomputation,
//! and under sampling the output follows AR's distribution (against the exact one computed
//! from the model, with a bound the draft distribution itself fails).

use candle_core::{Device, Tensor};
use card::decode::{ArDecoder, Decoder, GenOptions, Sampling, StepTrace, VerifyDecoder};
use card::model::{Attention, Backend, Session, Transformer};
use std::collections::HashMap;

mod common;

use common::trained::{encode, fixture, opts, tok, total_variation};

#[test]
fn greedy_verification_is_ar_greedy() {
    let f = fixture();
    // Ragged rows; repetitive prompts make the tiny model loop, so drafts get accepted too.
    let prompts = encode(&[
        "Alice was beginning",
        "The Queen",
        "'Off with",
        "\"I",
        "the the the the the the",
        "a, b, c, d, e, f, g,",
    ]);
    let (mut accepted, mut rejected) = (0, 0);
    for backend in [Backend::Host, Backend::Candle] {
        for max_new in [1, 7, 40] {
            let o = opts(max_new, Sampling::default(), backend);
            let ar = ArDecoder
                .generate(&f.plain, &prompts, &o, &mut |_| {})
                .unwrap();
            for k in [1, 2, 4, 7] {
                let d = VerifyDecoder::masks(k);
                let mut steps: Vec<StepTrace> = Vec::new();
                let batched = d
                    .generate(&f.plain, &prompts, &o, &mut |s| steps.push(s.clone()))
                    .unwrap();
                for (r, (a, v)) in ar.rows.iter().zip(&batched.rows).enumerate() {
                    assert_eq!(
                        a.tokens, v.tokens,
                        "{backend:?} K={k} len {max_new} row {r}"
                    );
                    assert_eq!(a.finish, v.finish);
                    assert!(v.forward_passes <= a.forward_passes);
                }
                // A row alone decodes as it does in the batch.
                let single = d
                    .generate(&f.plain, &prompts[4..5], &o, &mut |_| {})
                    .unwrap();
                assert_eq!(single.rows[0].tokens, batched.rows[4].tokens);
                for s in &steps {
                    assert!(!s.committed.is_empty(), "every pass commits");
                    assert!(s.committed.len() <= k + 1 && s.rejected.len() <= 1);
                    accepted += s.committed.len() - 1;
                    rejected += s.rejected.len();
                }
            }
        }
    }
    // Computed positions: AR computes exactly what it keeps; the verifier at least that.
    let fixed = GenOptions {
        eos_id: u32::MAX,
        ..opts(20, Sampling::default(), Backend::Host)
    };
    let ar = ArDecoder
        .generate(&f.plain, &prompts, &fixed, &mut |_| {})
        .unwrap();
    assert_eq!(ar.computed_tokens, ar.generated_tokens());
    let v = VerifyDecoder::masks(4)
        .generate(&f.plain, &prompts, &fixed, &mut |_| {})
        .unwrap();
    assert!(v.computed_tokens > v.generated_tokens() && v.kept_fraction() < 1.0);
    assert!(
        accepted > 0 && rejected > 0,
        "both paths ran: {accepted} accepted, {rejected} rejected"
    );
}

#[test]
fn cache_after_accept_reject_cycles_equals_recomputation() {
    let model = &fixture().plain;
    let mask = tok().mask_id();
    let full = |s: &[u32]| common::full_logits(model, s);
    for backend in [Backend::Host, Backend::Candle] {
        let mut session = Session::new(model, backend, 2, 128, 64, tok().eot_id()).unwrap();
        let mut kept: Vec<Vec<u32>> = encode(&["Alice was beginning to get", "The"]);
        let mut pending = kept.clone();
        // Each cycle: pending committed tokens, drafts and masks; keep `accept[r]` drafts.
        for (cycle, accept) in [[2usize, 0], [0, 3], [1, 1], [4, 2]].iter().enumerate() {
            let drafts: Vec<Vec<u32>> = (0..2)
                .map(|r| {
                    (0..4)
                        .map(|i| (10 + 7 * cycle + 3 * i + r) as u32)
                        .collect()
                })
                .collect();
            let inputs: Vec<Vec<u32>> = (0..2)
                .map(|r| {
                    let mut x = pending[r].clone();
                    x.extend(&drafts[r]);
                    x.extend([mask; 3]);
                    x
                })
                .collect();
            let before = session.lens().to_vec();
            session.forward(&inputs).unwrap();
            for r in 0..2 {
                let p = pending[r].len();
                // The kept part's logits, as fed, equal a full recomputation.
                let mut seq = kept[r].clone();
                seq.extend(&drafts[r][..accept[r]]);
                let reference = full(&seq);
                for i in 0..p + accept[r] {
                    let got = session.logits(r, i);
                    let want = &reference[before[r] + i];
                    let diff = common::max_slice_diff(got, want);
                    assert!(
                        diff < 1e-4,
                        "{backend:?} cycle {cycle} row {r} fed {i}: {diff}"
                    );
                }
                session.truncate_row(r, before[r] + p + accept[r]);
                // The AR token after the accepted drafts becomes the next pass's pending.
                let bonus = 20 + cycle as u32;
                seq.push(bonus);
                kept[r] = seq;
                pending[r] = vec![bonus];
                assert_eq!(session.lens()[r], kept[r].len() - 1);
            }
        }
    }
}

/// The exact probability of every (first, second) generated token pair under `sampling`,
/// from the model's own next-token distributions.
fn exact_pairs(model: &Transformer, prompt: &[u32], s: &Sampling) -> HashMap<(u32, u32), f64> {
    let mask = tok().mask_id();
    let last = |seq: &[u32]| {
        let ids = Tensor::from_slice(seq, (1, seq.len()), &Device::Cpu).unwrap();
        let l = model.forward(&ids, Attention::Causal, None).unwrap();
        let t = seq.len() - 1;
        l.get(0).unwrap().get(t).unwrap().to_vec1::<f32>().unwrap()
    };
    let mut out = HashMap::new();
    for (a, pa) in s.distribution(&last(prompt), &[prompt], &[mask]) {
        let seq: Vec<u32> = prompt.iter().copied().chain([a]).collect();
        let ctx = [prompt, &[a][..]];
        for (b, pb) in s.distribution(&last(&seq), &ctx, &[mask]) {
            out.insert((a, b), pa * pb);
        }
    }
    out
}

#[test]
fn speculative_sampling_matches_ar_distribution() {
    let f = fixture();
    let model = &f.plain;
    let mask = tok().mask_id();
    let s = Sampling {
        temperature: 1.0,
        top_k: 4,
        ..Sampling::default()
    };
    let prompt = tok().encode("Alice was").unwrap();
    let exact = exact_pairs(model, &prompt, &s);
    // What accepting every draft would give: AR's first token, the [MASK] slot's second.
    let draft_joint: HashMap<(u32, u32), f64> = {
        let seq: Vec<u32> = prompt.iter().copied().chain([mask]).collect();
        let ids = Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu).unwrap();
        let l = model
            .forward(&ids, Attention::Causal, None)
            .unwrap()
            .get(0)
            .unwrap();
        let at = |t: usize| l.get(t).unwrap().to_vec1::<f32>().unwrap();
        let first = s.distribution(&at(prompt.len() - 1), &[&prompt], &[mask]);
        let second = s.distribution(&at(prompt.len()), &[&prompt], &[mask]);
        first
            .iter()
            .flat_map(|&(a, pa)| second.iter().map(move |&(b, pb)| ((a, b), pa * pb)))
            .collect()
    };
    let n = 3000;
    let rows = vec![prompt.clone(); n];
    let o = GenOptions {
        eos_id: u32::MAX, // every row generates both tokens
        seed: 5,
        ..opts(2, s.clone(), Backend::Host)
    };
    let mut counts: HashMap<(u32, u32), f64> = HashMap::new();
    let g = VerifyDecoder::masks(2)
        .generate(model, &rows, &o, &mut |_| {})
        .unwrap();
    for r in &g.rows {
        *counts.entry((r.tokens[0], r.tokens[1])).or_default() += 1.0 / n as f64;
    }
    // 16 outcomes, 3000 draws: sampling noise in TV is about 0.03; a broken acceptance
    // rule lands near the draft joint, which this model keeps far from the exact one.
    let bound = 0.06;
    let broken = total_variation(&exact, &draft_joint);
    assert!(
        broken > 2.0 * bound,
        "the test would not see a broken rule: TV {broken}"
    );
    let tv = total_variation(&exact, &counts);
    assert!(
        tv < bound,
        "TV to AR's exact distribution {tv} (draft joint at {broken})"
    );
    // AR sampling itself passes the same bound (the test's own calibration).
    let ar = ArDecoder.generate(model, &rows, &o, &mut |_| {}).unwrap();
    let mut ar_counts: HashMap<(u32, u32), f64> = HashMap::new();
    for r in &ar.rows {
        *ar_counts.entry((r.tokens[0], r.tokens[1])).or_default() += 1.0 / n as f64;
    }
    assert!(total_variation(&exact, &ar_counts) < bound);
}
