//! Decoding invariants on a briefly trained `tiny` CARD model: CARD with K = 1 or a
//! floor-only threshold reproduces AR greedy decoding, every step commits, T_max = 1 commits
//! a block per pass, batches equal one-by-one decoding, sampling is seeded, a stop condition
//! cuts at exactly its token, the most-confident floor picks the top masked slot, and ragged
//! cached forwards equal full recomputation. Seeding and non-finite logits need no trained
//! model: they run on the uniform-logits one (`common::uniform`).

use candle_core::Tensor;
use card::data::TextTokenizer;
use card::decode::{
    ArDecoder, CardDecoder, CommitMode, Decoder, Finish, Floor, GenOptions, Generation, Sampling,
    StepTrace, VerifyDecoder,
};
use card::model::{Attention, Backend, KvCache, Transformer};
use common::max_abs_diff;

mod common;

use common::trained::fixture;
use common::uniform::uniform;

/// The `tiny` tokenizer (the trained fixture's too), without waiting for the training.
fn tok() -> &'static TextTokenizer {
    &uniform().data.tokenizer
}

fn prompts() -> Vec<Vec<u32>> {
    ["Alice was beginning", "The Queen", "'Off with", "\"I"]
        .iter()
        .map(|p| tok().encode(p).unwrap())
        .collect()
}

fn opts(max_new: usize, sampling: Sampling, seed: u64) -> GenOptions<'static> {
    GenOptions {
        max_new_tokens: max_new,
        eos_id: tok().eot_id(),
        mask_id: tok().mask_id(),
        sampling,
        seed,
        stop: None,
        backend: None,
    }
}

fn run(d: &dyn Decoder, prompts: &[Vec<u32>], o: &GenOptions) -> (Generation, Vec<StepTrace>) {
    run_on(&fixture().model, d, prompts, o)
}

fn run_on(
    model: &Transformer,
    d: &dyn Decoder,
    prompts: &[Vec<u32>],
    o: &GenOptions,
) -> (Generation, Vec<StepTrace>) {
    let mut steps = Vec::new();
    let g = d
        .generate(model, prompts, o, &mut |s| steps.push(s.clone()))
        .unwrap();
    (g, steps)
}

fn card(k: usize, t_max: usize, tau: f64, commit: CommitMode) -> CardDecoder {
    CardDecoder {
        block_size: k,
        step_limit: t_max,
        threshold: tau,
        floor: Floor::Leftmost,
        commit,
    }
}

fn tokens(g: &Generation) -> Vec<Vec<u32>> {
    g.rows.iter().map(|r| r.tokens.clone()).collect()
}

#[test]
fn card_reduces_to_ar_greedy() {
    // On the invariant tests' device (`CARD_TEST_DEVICE`).
    let model = &fixture().on_device;
    let run = |d: &dyn Decoder, ps: &[Vec<u32>], o: &GenOptions| run_on(model, d, ps, o);
    let ps = prompts();
    let o = opts(40, Sampling::default(), 0);
    let (ar, _) = run(&ArDecoder, &ps[..1], &o);
    assert!(
        ar.rows[0].tokens.len() >= 10,
        "AR stopped early: {:?}",
        ar.rows[0]
    );
    for d in [
        card(1, 1, 0.9, CommitMode::Block),
        card(1, 4, 0.0, CommitMode::Block),
        card(4, 4, 1.5, CommitMode::Block),
        card(6, 9, 2.0, CommitMode::Block),
        card(4, 4, 1.5, CommitMode::Sliding),
    ] {
        let (g, steps) = run(&d, &ps[..1], &o);
        assert_eq!(tokens(&g), tokens(&ar), "{d:?}");
        // Floor-only decoding commits exactly one token per pass, like AR.
        assert!(steps.iter().all(|s| s.committed.len() == 1), "{d:?}");
    }
}

#[test]
fn every_step_commits_and_step_limit_one_fills_blocks_in_one_pass() {
    let ps = prompts();
    let o = opts(32, Sampling::default(), 0);
    for d in [
        card(4, 4, 0.9, CommitMode::Block),
        card(8, 3, 0.5, CommitMode::Block),
        card(4, 2, 0.7, CommitMode::Sliding),
    ] {
        let (g, steps) = run(&d, &ps, &o);
        assert!(
            steps.iter().all(|s| !s.committed.is_empty()),
            "{d:?}: a step stalled"
        );
        for row in &g.rows {
            assert!(row.tokens.len() <= 32);
            assert!(!row.tokens.contains(&tok().mask_id()));
        }
    }
    let d = card(4, 1, 1.0, CommitMode::Block);
    let (g, steps) = run(&d, &ps[..1], &opts(32, Sampling::default(), 0));
    assert!(steps
        .iter()
        .all(|s| s.step == 1 && s.slots.iter().all(|x| !x.masked)));
    let row = &g.rows[0];
    if row.tokens.len() == 32 {
        assert_eq!(
            row.forward_passes, 8,
            "32 tokens in blocks of 4 need 8 passes"
        );
    }
    assert!((row.tokens.len() as f64 / row.forward_passes as f64) > 1.0 || row.tokens.len() < 4);
}

#[test]
fn batched_equals_one_by_one() {
    let ps = prompts();
    let o = opts(24, Sampling::default(), 0);
    let decoders: Vec<Box<dyn Decoder>> = vec![
        Box::new(ArDecoder),
        Box::new(card(4, 4, 0.6, CommitMode::Block)),
        Box::new(card(3, 2, 0.6, CommitMode::Sliding)),
    ];
    for d in &decoders {
        let (batched, _) = run(d.as_ref(), &ps, &o);
        for (i, p) in ps.iter().enumerate() {
            let (single, _) = run(d.as_ref(), std::slice::from_ref(p), &o);
            assert_eq!(
                batched.rows[i].tokens,
                single.rows[0].tokens,
                "{} row {i}",
                d.name()
            );
        }
    }
}

#[test]
fn sampling_is_deterministic_for_a_seed() {
    let ps = prompts();
    let s = Sampling {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.1,
    };
    for d in [
        &ArDecoder as &dyn Decoder,
        &card(4, 4, 0.5, CommitMode::Block),
    ] {
        let (a, _) = run_on(&uniform().model, d, &ps, &opts(24, s.clone(), 7));
        let (b, _) = run_on(&uniform().model, d, &ps, &opts(24, s.clone(), 7));
        let (c, _) = run_on(&uniform().model, d, &ps, &opts(24, s.clone(), 8));
        assert_eq!(tokens(&a), tokens(&b), "{}", d.name());
        assert_ne!(
            tokens(&a),
            tokens(&c),
            "{}: seeds 7 and 8 gave the same text",
            d.name()
        );
    }
}

/// A stop condition ends a row right after the token that satisfies it, keeping every token
/// before it unchanged: exactly the unstopped run's tokens up to the first prefix that
/// matches, whatever the decoder commits per pass (AR one token, CARD a block of 4, the
/// verifier several drafts).
#[test]
fn stop_condition_and_budget_are_respected() {
    let ps = prompts();
    for d in [
        &ArDecoder as &dyn Decoder,
        &card(4, 4, 0.5, CommitMode::Block),
        &VerifyDecoder::masks(3),
    ] {
        let (free, _) = run(d, &ps[..1], &opts(30, Sampling::default(), 0));
        let free = &free.rows[0].tokens;
        assert!(free.len() >= 12, "{}: only {} tokens", d.name(), free.len());
        // A length condition: exactly 5 tokens.
        let stop = |_row: usize, gen: &[u32]| gen.len() >= 5;
        let o = GenOptions {
            stop: Some(&stop),
            ..opts(30, Sampling::default(), 0)
        };
        let (g, _) = run(d, &ps[..1], &o);
        assert_eq!(g.rows[0].tokens, free[..5], "{}", d.name());
        assert_eq!(g.rows[0].finish, Finish::Stop, "{}", d.name());
        // A stop string (as `--stop` builds it: the decoded text contains it), taken from the
        // unstopped text's tokens 6..8: the row ends at the shortest prefix whose text holds it.
        let needle = tok().decode(&free[5..8]).unwrap().trim().to_string();
        assert!(!needle.is_empty(), "{}: a blank stop string", d.name());
        let text_of = |gen: &[u32]| tok().decode(gen).unwrap();
        let want = (1..=free.len())
            .find(|&n| text_of(&free[..n]).contains(&needle))
            .expect("the unstopped text holds the stop string");
        assert!(
            want < free.len(),
            "{}: the stop string ends the text",
            d.name()
        );
        let stop = |_row: usize, gen: &[u32]| text_of(gen).contains(&needle);
        let o = GenOptions {
            stop: Some(&stop),
            ..opts(30, Sampling::default(), 0)
        };
        let (g, _) = run(d, &ps[..1], &o);
        assert_eq!(
            g.rows[0].tokens,
            free[..want],
            "{}: stop {needle:?}",
            d.name()
        );
        assert_eq!(g.rows[0].finish, Finish::Stop, "{}", d.name());
    }
    assert!(ArDecoder
        .generate(
            &fixture().model,
            &[vec![2; 60]],
            &opts(10, Sampling::default(), 0),
            &mut |_| {}
        )
        .is_err());
}

/// With τ above every confidence no slot passes the threshold, so each step commits the
/// floor's one slot: under `Floor::MostConfident` the masked slot of the highest confidence
/// (the leftmost among equals), never a slot committed before. T_max > K, so no step is
/// forced to fill the block. The committed tokens, by position, are the generation.
#[test]
fn most_confident_floor_commits_the_most_confident_masked_slot() {
    let ps = prompts();
    let d = CardDecoder {
        floor: Floor::MostConfident,
        ..card(4, 5, 2.0, CommitMode::Block)
    };
    let (g, steps) = run(&d, &ps, &opts(16, Sampling::default(), 0));
    let mut committed: Vec<Vec<(usize, u32)>> = vec![Vec::new(); ps.len()];
    let mut not_leftmost = 0;
    for s in &steps {
        assert_eq!(s.committed.len(), 1, "one slot per step: {s:?}");
        let c = &s.committed[0];
        // The slots still masked after the step were the other candidates.
        for o in s.slots.iter().filter(|o| o.masked) {
            let beaten =
                c.confidence > o.confidence || (c.confidence == o.confidence && c.pos < o.pos);
            assert!(beaten, "committed {c:?} over {o:?}");
            not_leftmost += usize::from(o.pos < c.pos);
        }
        assert!(
            committed[s.row].iter().all(|&(p, _)| p != c.pos),
            "slot {} committed twice",
            c.pos
        );
        committed[s.row].push((c.pos, c.token));
    }
    // The leftmost floor would never skip a masked slot: the test tells the floors apart.
    assert!(not_leftmost > 0, "every step chose the leftmost slot");
    for (r, row) in g.rows.iter().enumerate() {
        let mut c = committed[r].clone();
        c.sort();
        let by_pos: Vec<u32> = c.iter().map(|x| x.1).collect();
        assert!(row.tokens.len() >= 4, "row {r} ended early: {row:?}");
        assert_eq!(row.tokens, by_pos[..row.tokens.len()], "row {r}");
    }
}

#[test]
fn ragged_cached_forward_equals_full_recomputation() {
    let model = &fixture().on_device;
    let c = &model.cfg;
    let dev = model.device().clone();
    let a: Vec<u32> = tok()
        .encode("Alice was beginning to get very tired")
        .unwrap();
    let b: Vec<u32> = tok().encode("of sitting").unwrap();
    let full = |s: &[u32]| {
        let ids = Tensor::from_slice(s, (1, s.len()), &dev).unwrap();
        model
            .forward(&ids, Attention::Causal, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    let mut cache = KvCache::new(
        c.n_layers,
        2,
        c.n_heads,
        c.head_dim(),
        64,
        model.dtype(),
        &dev,
    )
    .unwrap();
    // Prefill rows of different lengths in one padded forward.
    let t = a.len().max(b.len());
    let mut ids = a.clone();
    ids.resize(t, 0);
    let mut ids_b = b.clone();
    ids_b.resize(t, 0);
    ids.extend(ids_b);
    let ids = Tensor::from_vec(ids, (2, t), &dev).unwrap();
    let out = model
        .forward_ragged(
            &ids,
            Attention::Causal,
            Some(&mut cache),
            Some(&[a.len(), b.len()]),
        )
        .unwrap();
    assert_eq!(cache.lens(), &[a.len(), b.len()]);
    let diff = max_abs_diff;
    assert!(
        diff(
            &out.get(0).unwrap().narrow(0, 0, a.len()).unwrap(),
            &full(&a)
        ) < 1e-4
    );
    assert!(
        diff(
            &out.get(1).unwrap().narrow(0, 0, b.len()).unwrap(),
            &full(&b)
        ) < 1e-4
    );
    // Continue both rows by two tokens each.
    let ids = Tensor::from_vec(vec![5u32, 6, 7, 8], (2, 2), &dev).unwrap();
    let out = model
        .forward(&ids, Attention::Causal, Some(&mut cache))
        .unwrap();
    let a2: Vec<u32> = a.iter().copied().chain([5, 6]).collect();
    let b2: Vec<u32> = b.iter().copied().chain([7, 8]).collect();
    assert!(
        diff(
            &out.get(0).unwrap(),
            &full(&a2).narrow(0, a.len(), 2).unwrap()
        ) < 1e-4
    );
    assert!(
        diff(
            &out.get(1).unwrap(),
            &full(&b2).narrow(0, b.len(), 2).unwrap()
        ) < 1e-4
    );
}

#[test]
fn host_engine_logits_equal_full_recomputation() {
    use card::model::host::HostPass;
    let model = &fixture().model;
    let full = |s: &[u32]| common::full_logits(model, s);
    let mut engine = HostPass::new(model, 3, model.cfg.max_seq_len).expect("a plain f32 CPU model");
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); 3];
    // Pass 1: a prompt longer than the small-row kernel's 16 rows (the gemm path), a short
    // one and an empty row; then appends of different lengths; then a rollback.
    let long = tok()
        .encode("Alice was beginning to get very tired of sitting by her sister on the bank")
        .unwrap();
    assert!(long.len() > 16);
    // (inputs per row, rollback (row, by) before the pass)
    type Pass = (Vec<Vec<u32>>, Option<(usize, usize)>);
    let passes: Vec<Pass> = vec![
        (vec![long, tok().encode("The Queen").unwrap(), vec![]], None),
        (vec![vec![5], vec![7, 9], vec![3, 4, 11]], None),
        (vec![vec![], vec![13], vec![2]], Some((1, 1))),
    ];
    for (inputs, rollback) in passes {
        if let Some((row, by)) = rollback {
            let len = engine.lens()[row] - by;
            engine.truncate_row(row, len);
            seqs[row].truncate(len);
        }
        engine.forward(&inputs).unwrap();
        for (r, input) in inputs.iter().enumerate() {
            let before = seqs[r].len();
            seqs[r].extend(input);
            assert_eq!(engine.lens()[r], seqs[r].len());
            if input.is_empty() {
                continue;
            }
            let reference = full(&seqs[r]);
            for i in 0..input.len() {
                let got = engine.logits(r, i);
                let want = &reference[before + i];
                let diff = common::max_slice_diff(got, want);
                assert!(
                    diff < 1e-4,
                    "row {r} position {}: max |Δ| {diff}",
                    before + i
                );
            }
        }
    }
    // Beyond the context: a clear error, nothing cached.
    let too_long = vec![vec![1u32; model.cfg.max_seq_len], vec![], vec![]];
    let err = engine.forward(&too_long).unwrap_err().to_string();
    assert!(err.contains("exceeds the model's context"), "{err}");
}

#[test]
fn host_engine_and_candle_path_decode_alike() {
    // The same weights decoded by the two backends of the cached forward.
    let f = fixture();
    assert_eq!(Backend::for_model(&f.plain), Backend::Host);
    assert_eq!(
        Backend::for_model(&f.vars),
        Backend::Candle,
        "training Vars"
    );
    let on = |backend| GenOptions {
        backend: Some(backend),
        ..opts(24, Sampling::default(), 0)
    };
    let card = CardDecoder {
        block_size: 4,
        step_limit: 4,
        threshold: 0.3,
        ..CardDecoder::default()
    };
    for d in [&ArDecoder as &dyn Decoder, &card] {
        let a = d
            .generate(&f.plain, &prompts(), &on(Backend::Host), &mut |_| {})
            .unwrap();
        let b = d
            .generate(&f.plain, &prompts(), &on(Backend::Candle), &mut |_| {})
            .unwrap();
        for (ra, rb) in a.rows.iter().zip(&b.rows) {
            assert_eq!(ra.tokens, rb.tokens, "{}: tokens differ", d.name());
            assert_eq!(ra.forward_passes, rb.forward_passes, "{}", d.name());
        }
    }
}

/// A model whose weights hold NaN (intact on disk, so no checksum catches it) stops every
/// decoder with an error naming the cause, on both backends, instead of panicking a sampler.
#[test]
fn non_finite_logits_are_an_error_not_a_panic() {
    use card::decode::{Bd3lmDecoder, MdlmDecoder};
    let good = &uniform().model;
    let tensors = good.dense_tensors().unwrap();
    let bad = card::model::Transformer::from_tensors(&good.cfg, |n| {
        let t = &tensors[n];
        // One poisoned matrix is enough: the final norm feeds every logit.
        if n.contains("norm") {
            t.affine(f64::NAN, 0.0)
        } else {
            Ok(t.clone())
        }
    })
    .unwrap();
    let decoders: Vec<Box<dyn Decoder>> = vec![
        Box::new(ArDecoder),
        Box::new(card(4, 4, 0.9, CommitMode::Block)),
        Box::new(VerifyDecoder::masks(2)),
        Box::new(MdlmDecoder { steps: 4 }),
        Box::new(Bd3lmDecoder::default()),
    ];
    for backend in [Backend::Host, Backend::Candle] {
        for d in &decoders {
            let o = GenOptions {
                backend: Some(backend),
                ..opts(4, Sampling::default(), 0)
            };
            let err = d
                .generate(&bad, &prompts(), &o, &mut |_| {})
                .err()
                .unwrap_or_else(|| panic!("{backend:?}: a NaN model decoded"));
            assert!(err.to_string().contains("non-finite logits"), "{err}");
        }
    }
}
