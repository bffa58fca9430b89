//! Prompt-lookup drafts in the lossless verifier, on the briefly trained `tiny` CARD model:
//! greedy output equals AR greedy token for token (lookup alone, lookup beside `[MASK]`
//! slots, ragged rows, both backends), and on text that repeats the drafts are accepted, so
//! fewer passes than tokens run (counted, not timed).

use card::config::ObjectiveKind;
use card::decode::{ArDecoder, Decoder, GenOptions, Sampling, StepTrace, VerifyDecoder};
use card::model::Backend;

mod common;

use common::trained::{fixture, tok};

#[test]
fn lookup_drafts_keep_ar_greedy_output_and_save_passes_on_repeats() {
    let f = fixture();
    let prompts: Vec<Vec<u32>> = [
        "Alice was beginning",
        "a, b, c, a, b, c, a, b, c, a, b,",
        "'Off with her head!' said the Queen. 'Off with",
        "the the the the the the",
    ]
    .iter()
    .map(|p| tok().encode(p).unwrap())
    .collect();
    for backend in [Backend::Host, Backend::Candle] {
        for max_new in [1, 9, 40] {
            let o = GenOptions {
                sampling: Sampling::default(),
                backend: Some(backend),
                ..GenOptions::new(max_new, tok())
            };
            let ar = ArDecoder
                .generate(&f.plain, &prompts, &o, &mut |_| {})
                .unwrap();
            for (k, l) in [(0, 2), (0, 5), (2, 5), (1, 3)] {
                let d = VerifyDecoder::with_lookup(k, l);
                let mut steps: Vec<StepTrace> = Vec::new();
                let v = d
                    .generate(&f.plain, &prompts, &o, &mut |s| steps.push(s.clone()))
                    .unwrap();
                for (r, (a, b)) in ar.rows.iter().zip(&v.rows).enumerate() {
                    let what = format!("{backend:?} K={k} L={l} len {max_new} row {r}");
                    assert_eq!(a.tokens, b.tokens, "{what}");
                    assert_eq!(a.finish, b.finish, "{what}");
                    assert!(b.forward_passes <= a.forward_passes, "{what}");
                }
                for s in &steps {
                    assert!(!s.committed.is_empty(), "every pass commits");
                    assert!(s.committed.len() <= k.max(l) + 1);
                }
                if max_new == 40 {
                    // The repeating rows copy their period: drafts stand, passes are saved.
                    let row = &v.rows[1];
                    assert!(
                        row.forward_passes < row.tokens.len(),
                        "K={k} L={l}: {} passes for {} tokens",
                        row.forward_passes,
                        row.tokens.len()
                    );
                }
            }
        }
    }
}

#[test]
fn lookup_alone_suits_any_causal_model_and_verify_needs_some_drafts() {
    let lookup_only = VerifyDecoder::with_lookup(0, 4);
    assert!(lookup_only.fits(ObjectiveKind::Arm));
    assert!(lookup_only.fits(ObjectiveKind::Card));
    assert!(!lookup_only.fits(ObjectiveKind::Mdlm));
    assert!(!VerifyDecoder::masks(2).fits(ObjectiveKind::Arm));
    let none = VerifyDecoder::with_lookup(0, 0);
    let err = none.validate().unwrap_err().to_string();
    assert!(err.contains("verify needs drafts"), "{err}");
}
