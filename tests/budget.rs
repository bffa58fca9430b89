//! The verifier's budget on a model whose `[MASK]` drafts are always wrong: it falls back to
//! AR's passes, so decoding costs no more than AR beyond the warm-up and the periodic probes
//! (counted from the positions each pass fed, not timed), while prompt lookup, right on the
//! same model, keeps paying; every committed draft names its source.
//!
//! The model: every layer's output projections are zero, so a position's output is its own
//! embedding, normed, times the head; the head is the embedding matrix, random rows of 64
//! values, so each token predicts itself. Greedy AR repeats the prompt's last token t
//! forever; a `[MASK]` slot predicts the token nearest the mask's embedding (the mask id
//! itself being banned), a fixed x ≠ t: every mask draft is wrong.

use candle_core::{Device, Tensor};
use card::config::Config;
use card::decode::{
    ArDecoder, Decoder, DraftSource, GenOptions, Generation, Sampling, StepTrace, VerifyDecoder,
};
use card::model::{tensor_specs, Backend, Transformer};

const VOCAB: usize = 512;
const MASK: u32 = 3;

fn model() -> Transformer {
    let mut cfg = Config::load("tiny", &[]).unwrap().model;
    cfg.vocab_size = VOCAB;
    cfg.max_seq_len = 512;
    let specs = tensor_specs(&cfg);
    // A fixed pseudo-random embedding (an LCG: no RNG crate state to depend on).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let embed: Vec<f32> = (0..VOCAB * cfg.d_model)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Transformer::from_tensors(&cfg, |name| {
        let s = specs.iter().find(|s| s.name == name).expect("a spec");
        let shape = s.shape.as_slice();
        if name == "embed.weight" || name == "head.weight" {
            Tensor::from_vec(embed.clone(), shape, &Device::Cpu)
        } else if name.ends_with("norm.weight") {
            Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu)
        } else {
            Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu)
        }
    })
    .unwrap()
}

fn opts(max_new: usize, backend: Backend) -> GenOptions<'static> {
    GenOptions {
        max_new_tokens: max_new,
        // No end of text: every run decodes its full length.
        eos_id: u32::MAX,
        mask_id: MASK,
        sampling: Sampling::default(),
        seed: 0,
        stop: None,
        backend: Some(backend),
    }
}

/// Decode with `d`, keeping the trace.
fn run(
    m: &Transformer,
    d: &VerifyDecoder,
    prompt: &[u32],
    o: &GenOptions,
) -> (Generation, Vec<StepTrace>) {
    let mut steps = Vec::new();
    let g = d
        .generate(m, &[prompt.to_vec()], o, &mut |s| steps.push(s.clone()))
        .unwrap();
    (g, steps)
}

/// Committed drafts by source, and rejected drafts.
fn drafts(steps: &[StepTrace], source: DraftSource) -> (usize, usize) {
    let by = |slots: &[card::decode::SlotTrace]| {
        slots.iter().filter(|s| s.source == Some(source)).count()
    };
    let accepted = steps.iter().map(|s| by(&s.committed)).sum();
    let rejected = steps.iter().map(|s| by(&s.rejected)).sum();
    (accepted, rejected)
}

/// The modelled cost of a batch-1 run per token, in one-position passes: each pass costs 1
/// plus `slope` per extra position it fed. Plain AR scores 1.
fn cost_per_token(g: &Generation, slope: f64) -> f64 {
    let passes = g.forward_passes as f64;
    let extra = g.computed_tokens as f64 - passes;
    (passes + slope * extra) / g.generated_tokens() as f64
}

#[test]
fn drafts_that_are_always_wrong_cost_no_more_than_ar_passes() {
    let m = model();
    let prompt = [17u32, 40, 101];
    for backend in [Backend::Host, Backend::Candle] {
        let o = opts(400, backend);
        let ar = ArDecoder
            .generate(&m, &[prompt.to_vec()], &o, &mut |_| {})
            .unwrap();
        // The premise: AR repeats the prompt's last token.
        assert!(ar.rows[0].tokens.iter().all(|&t| t == 101), "{backend:?}");
        for k in [1, 2, 4] {
            // Positions free: every slot is fed and every mask draft sent, and none stands.
            let free = VerifyDecoder {
                cost: Some(0.0),
                ..VerifyDecoder::masks(k)
            };
            let (g, steps) = run(&m, &free, &prompt, &o);
            assert_eq!(g.rows[0].tokens, ar.rows[0].tokens);
            let (accepted, rejected) = drafts(&steps, DraftSource::Mask);
            assert_eq!(accepted, 0, "K={k}: a mask draft stood");
            assert!(rejected >= 150, "K={k}: {rejected} mask drafts checked");
            assert!(
                cost_per_token(&g, 0.25) > 1.2,
                "without a budget the slots cost"
            );
            // The budget at the default slope: AR's passes after the warm-up.
            let slope = 0.25;
            let budgeted = VerifyDecoder {
                cost: Some(slope),
                ..VerifyDecoder::masks(k)
            };
            // With a draft tree beside the mask drafts (their runners-up, as wrong as they
            // are): the same.
            let tree = VerifyDecoder {
                tree: 4,
                ..budgeted.clone()
            };
            for d in [budgeted, tree] {
                let (g, _) = run(&m, &d, &prompt, &o);
                assert_eq!(g.rows[0].tokens, ar.rows[0].tokens);
                let c = cost_per_token(&g, slope);
                // The warm-up's 3 + 3 larger passes and a probe now and then (budget.rs).
                assert!(
                    c <= 1.04,
                    "{backend:?} {d:?}: {c:.3} one-position passes per token"
                );
                assert_eq!(g.forward_passes, 400, "every pass commits one token");
            }
        }
    }
}

#[test]
fn lookup_drafts_stand_beside_wrong_mask_drafts_and_are_named() {
    let m = model();
    let prompt = [17u32, 40, 101, 101, 101];
    let o = opts(60, Backend::Host);
    let ar = ArDecoder
        .generate(&m, &[prompt.to_vec()], &o, &mut |_| {})
        .unwrap();
    let d = VerifyDecoder {
        cost: Some(0.25),
        ..VerifyDecoder::with_lookup(2, 8)
    };
    let (g, steps) = run(&m, &d, &prompt, &o);
    assert_eq!(g.rows[0].tokens, ar.rows[0].tokens);
    let (looked_up, _) = drafts(&steps, DraftSource::Lookup);
    let (masked, _) = drafts(&steps, DraftSource::Mask);
    assert!(looked_up >= 40, "{looked_up} lookup drafts stood");
    assert_eq!(masked, 0);
    assert!(
        g.forward_passes <= 15,
        "{} passes for 60 tokens",
        g.forward_passes
    );
    // AR's own tokens carry no source; every committed draft does.
    for s in &steps {
        let (last, drafted) = s.committed.split_last().unwrap();
        assert!(drafted
            .iter()
            .all(|c| c.source == Some(DraftSource::Lookup)));
        assert!(last.source.is_none() || s.rejected.is_empty());
    }
}
