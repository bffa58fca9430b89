//! Evaluation against values computed here: the exact scorer's log-likelihood as a sum of
//! log-softmax terms of the model's full-sequence logits, LAMBADA's accuracy, target
//! perplexity and bits per byte (a hand-valued scorer, a model, and the `--lambada` CLI on a
//! request file written here), and `eval --generation --judge` scoring the samples under the
//! judge checkpoint.

use candle_core::{DType, Device};
use card::checkpoint::{self, Precision};
use card::config::ModelConfig;
use card::data::{embedded_documents, TextTokenizer, PROMPTS};
use card::decode::{ArDecoder, Decoder, GenOptions};
use card::eval::zero_shot::{score_lambada, ExactScorer, McDoc, Scorer};
use card::model::{Params, Transformer};
use common::{assert_success, card, full_logits, last_json, train_tiny};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;

mod common;

/// log softmax(logits)[target] in f64, by a loop.
fn log_prob(logits: &[f32], target: u32) -> f64 {
    let max = logits
        .iter()
        .map(|&v| v as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    logits[target as usize] as f64 - max - z.ln()
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The continuation's log-likelihood and whether greedy decoding produces it, from one
/// forward over the last `max_seq_len + 1` tokens of context ⊕ continuation: position j's
/// logits score token j + 1.
fn reference_loglik(model: &Transformer, ctx: &[u32], cont: &[u32]) -> (f64, bool) {
    let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let kept = &all[all.len().saturating_sub(model.cfg.max_seq_len + 1)..];
    let logits = full_logits(model, &kept[..kept.len() - 1]);
    let n = cont.len().min(kept.len() - 1);
    let (mut ll, mut greedy) = (0.0, true);
    for j in kept.len() - 1 - n..kept.len() - 1 {
        ll += log_prob(&logits[j], kept[j + 1]);
        greedy &= argmax(&logits[j]) == kept[j + 1];
    }
    (ll, greedy)
}

fn random_model(vocab: usize, seed: u64) -> Transformer {
    let cfg = ModelConfig {
        vocab_size: vocab,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        d_ff: 24,
        max_seq_len: 32,
        init_std: 0.5, // peaked predictions: greedy checks mean something
        ..ModelConfig::default()
    };
    let params = Params::init(&cfg, DType::F32, &Device::Cpu, seed).unwrap();
    let map = params.to_map().unwrap();
    Transformer::from_tensors(&cfg, |n| Ok(map[n].clone())).unwrap()
}

#[test]
fn exact_scorer_sums_log_softmax_of_the_full_sequence_logits() {
    let model = random_model(50, 1);
    let scorer = ExactScorer(&model);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(2);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(2..50)).collect() };
    // Short texts, a context past the window (its start is dropped) and a continuation
    // longer than the window (only its last 32 tokens are scored).
    for (c, k) in [(1, 1), (3, 5), (10, 2), (40, 5), (3, 40)] {
        let (ctx, cont) = (ids(c), ids(k));
        let (ll, greedy) = scorer.loglik(&ctx, &cont).unwrap();
        let (want, want_greedy) = reference_loglik(&model, &ctx, &cont);
        assert!(
            (ll - want).abs() < 1e-4 * want.abs().max(1.0),
            "{c}+{k}: {ll} vs {want}"
        );
        assert!(ll < 0.0);
        assert_eq!(greedy, Some(want_greedy), "{c}+{k}");
    }
    // The model's own greedy continuation is recognised as such; one changed token is not.
    let ctx = ids(4);
    let mut seq = ctx.clone();
    for _ in 0..6 {
        let logits = full_logits(&model, &seq);
        seq.push(argmax(logits.last().unwrap()));
    }
    let cont = seq[4..].to_vec();
    let (ll, greedy) = scorer.loglik(&ctx, &cont).unwrap();
    assert_eq!(greedy, Some(true));
    assert!((ll - reference_loglik(&model, &ctx, &cont).0).abs() < 1e-4);
    let mut wrong = cont.clone();
    wrong[3] = if wrong[3] == 2 { 3 } else { 2 };
    assert_eq!(scorer.loglik(&ctx, &wrong).unwrap().1, Some(false));
    assert_eq!(scorer.loglik(&ctx, &[]).unwrap(), (0.0, Some(true)));
}

/// Scores a continuation by a table lookup, ignoring its context.
struct Table(Vec<(Vec<u32>, f64, Option<bool>)>);

impl Scorer for Table {
    fn loglik(&self, _ctx: &[u32], cont: &[u32]) -> anyhow::Result<(f64, Option<bool>)> {
        let (_, ll, greedy) = self.0.iter().find(|x| x.0 == cont).expect("a known text");
        Ok((*ll, *greedy))
    }
}

fn doc(id: u64, context: &str, target: &str) -> McDoc {
    McDoc {
        doc_id: id,
        context: context.into(),
        choices: vec![target.into()],
        gold: 0,
    }
}

fn tokenizer() -> TextTokenizer {
    TextTokenizer::train(&embedded_documents(), 300).unwrap()
}

#[test]
fn lambada_aggregates_accuracy_perplexity_and_bits_per_byte() {
    let tok = tokenizer();
    let enc = |s: &str| tok.encode(s).unwrap();
    let docs = vec![
        doc(0, "The cat sat on the", " mat"),
        doc(1, "Alice opened the", " door"),
        doc(2, "She said", " goodbye"),
    ];
    let table = |g: [Option<bool>; 3]| {
        Table(vec![
            (enc(" mat"), -1.5, g[0]),
            (enc(" door"), -3.0, g[1]),
            (enc(" goodbye"), -2.0, g[2]),
        ])
    };
    let r = score_lambada(&table([Some(true), Some(false), Some(true)]), &tok, &docs).unwrap();
    let tokens = [" mat", " door", " goodbye"]
        .map(|s| enc(s).len())
        .iter()
        .sum::<usize>();
    assert_eq!(r.n, 3);
    assert_eq!(r.accuracy, Some(2.0 / 3.0));
    let se = (2.0f64 / 3.0 * (1.0 / 3.0) / 3.0).sqrt();
    assert!((r.accuracy_se.unwrap() - se).abs() < 1e-12);
    assert!((r.target_perplexity - (6.5 / tokens as f64).exp()).abs() < 1e-12);
    // 4 + 5 + 8 UTF-8 bytes of target text.
    let bpb = 6.5 / std::f64::consts::LN_2 / 17.0;
    assert!((r.bits_per_byte - bpb).abs() < 1e-12);
    // A scorer without a greedy check (a bound) gives no accuracy.
    let r = score_lambada(&table([None; 3]), &tok, &docs).unwrap();
    assert_eq!((r.accuracy, r.accuracy_se), (None, None));

    // A model: a target that is its greedy next token, and one that is not.
    let model = random_model(tok.vocab_size(), 4);
    let (hit, miss) = greedy_and_other_targets(&model, &tok);
    let docs = [hit, miss];
    let r = score_lambada(&ExactScorer(&model), &tok, &docs).unwrap();
    let (mut nll, mut tokens, mut bytes, mut hits) = (0.0, 0, 0, 0);
    for d in &docs {
        let (ctx, cont) = (enc(&d.context), enc(&d.choices[0]));
        let (ll, greedy) = reference_loglik(&model, &ctx, &cont);
        (nll, tokens, bytes) = (nll - ll, tokens + cont.len(), bytes + d.choices[0].len());
        hits += greedy as usize;
    }
    assert_eq!(hits, 1);
    assert_eq!(r.accuracy, Some(0.5));
    let ppl = (nll / tokens as f64).exp();
    assert!((r.target_perplexity - ppl).abs() < 1e-4 * ppl);
    let bpb = nll / std::f64::consts::LN_2 / bytes as f64;
    assert!((r.bits_per_byte - bpb).abs() < 1e-4 * bpb);
}

/// Two one-token targets after contexts of the embedded text: one the model's greedy next
/// token, one not (each a token whose text encodes back to itself).
fn greedy_and_other_targets(model: &Transformer, tok: &TextTokenizer) -> (McDoc, McDoc) {
    let contexts = [
        "Alice was",
        "The Queen",
        "She went",
        "It was the",
        "And the",
        "Down",
    ];
    let single = |t: u32| -> Option<String> {
        let s = tok.decode(&[t]).ok()?;
        (t > 1 && tok.encode(&s).ok()? == [t]).then_some(s)
    };
    let mut hit = None;
    let mut miss = None;
    for (i, c) in contexts.iter().enumerate() {
        let logits = full_logits(model, &tok.encode(c).unwrap());
        let last = logits.last().unwrap();
        let best = argmax(last);
        if hit.is_none() {
            hit = single(best).map(|s| doc(i as u64, c, &s));
        }
        if miss.is_none() {
            let other = (2..last.len() as u32).find(|&t| t != best && single(t).is_some());
            miss = other.map(|t| doc(i as u64 + 100, c, &single(t).unwrap()));
        }
    }
    (hit.expect("a greedy one-token target"), miss.unwrap())
}

fn write_lambada(data_dir: &Path, docs: &[McDoc]) {
    let dir = data_dir.join("eval").join("lambada");
    std::fs::create_dir_all(&dir).unwrap();
    let f = std::fs::File::create(dir.join("requests.jsonl.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    for d in docs {
        let line = serde_json::json!({
            "request_type": "loglikelihood",
            "request": {"context": d.context, "continuation": d.choices[0]},
            "idx": 0,
            "doc_id": d.doc_id,
            "label": [d.choices[0]],
        });
        writeln!(gz, "{line}").unwrap();
    }
    gz.finish().unwrap();
}

fn open(run: &Path) -> checkpoint::Opened {
    checkpoint::open_as(run, &Device::Cpu, true, Precision::Stored).unwrap()
}

#[test]
fn eval_cli_lambada_scores_the_request_file() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    train_tiny(cwd, "arm", 2, "run");
    let ckpt = open(&cwd.join("run"));
    let (model, tok) = (&ckpt.model, &ckpt.tokenizer);
    let (hit, miss) = greedy_and_other_targets(model, tok);
    let docs = [hit, miss, doc(7, "Once upon a", " time there was")];
    write_lambada(&cwd.join("evaldata"), &docs);
    let args = [
        "eval",
        "run",
        "--lambada",
        "--eval-data",
        "evaldata",
        "--max-windows",
        "1",
        "--json",
    ];
    let out = card(&args, cwd);
    assert_success(&out);
    let r = &last_json(&out)["lambada"];
    let (mut nll, mut tokens, mut bytes, mut hits) = (0.0, 0, 0, 0);
    for d in &docs {
        let (ctx, cont) = (
            tok.encode(&d.context).unwrap(),
            tok.encode(&d.choices[0]).unwrap(),
        );
        let (ll, greedy) = reference_loglik(model, &ctx, &cont);
        (nll, tokens, bytes) = (nll - ll, tokens + cont.len(), bytes + d.choices[0].len());
        hits += greedy as usize;
    }
    assert!(hits >= 1, "the greedy target is a hit");
    assert_eq!(r["n"], 3);
    assert_eq!(r["accuracy"].as_f64().unwrap(), hits as f64 / 3.0);
    let ppl = (nll / tokens as f64).exp();
    let got = r["target_perplexity"].as_f64().unwrap();
    assert!((got - ppl).abs() < 1e-4 * ppl, "{got} vs {ppl}");
    let bpb = nll / std::f64::consts::LN_2 / bytes as f64;
    let got = r["bits_per_byte"].as_f64().unwrap();
    assert!((got - bpb).abs() < 1e-4 * bpb, "{got} vs {bpb}");
}

/// exp(Σ NLL / Σ tokens) of greedy AR samples of `model` from the first `samples` fixed
/// prompts (`length` new tokens), each re-encoded as text and scored by `judge` from one
/// forward over prompt ⊕ sample.
fn judged_perplexity(
    model: &checkpoint::Opened,
    judge: &checkpoint::Opened,
    samples: usize,
    length: usize,
) -> f64 {
    let tok = &model.tokenizer;
    let prompts: Vec<Vec<u32>> = PROMPTS[..samples]
        .iter()
        .map(|p| tok.encode(p).unwrap())
        .collect();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap();
    let length = length.min(model.model.cfg.max_seq_len - longest);
    let g = ArDecoder
        .generate(
            &model.model,
            &prompts,
            &GenOptions::new(length, tok),
            &mut |_| {},
        )
        .unwrap();
    let (mut nll, mut n) = (0.0, 0);
    for (i, row) in g.rows.iter().enumerate() {
        let text = tok.decode(&row.tokens).unwrap();
        let p = judge.tokenizer.encode(PROMPTS[i]).unwrap();
        let c = judge.tokenizer.encode(&text).unwrap();
        if c.is_empty() {
            continue;
        }
        let all: Vec<u32> = p.iter().chain(&c).copied().collect();
        assert!(
            all.len() <= judge.model.cfg.max_seq_len + 1,
            "no truncation"
        );
        let logits = full_logits(&judge.model, &all[..all.len() - 1]);
        for j in p.len() - 1..all.len() - 1 {
            nll -= log_prob(&logits[j], all[j + 1]);
        }
        n += c.len();
    }
    assert!(n > 0, "the samples are not empty");
    (nll / n as f64).exp()
}

#[test]
fn eval_judge_scores_the_samples_under_the_judge_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    train_tiny(cwd, "arm", 6, "model");
    train_tiny(cwd, "arm", 2, "judge");
    let eval = |judge: Option<&str>| {
        let mut args = vec![
            "eval",
            "model",
            "--generation",
            "--gen-decoder",
            "ar",
            "--temperature",
            "0",
            "--gen-samples",
            "2",
            "--gen-length",
            "12",
            "--max-windows",
            "1",
            "--json",
        ];
        if let Some(j) = judge {
            args.extend(["--judge", j]);
        }
        let out = card(&args, cwd);
        assert_success(&out);
        last_json(&out)["generation"].clone()
    };
    let ppl = |g: &serde_json::Value| g["generative_perplexity"].as_f64().unwrap();
    let (model, judge) = (open(&cwd.join("model")), open(&cwd.join("judge")));
    let itself = eval(None);
    assert_eq!(itself["judge"], "self");
    let want = judged_perplexity(&model, &model, 2, 12);
    assert!(
        (ppl(&itself) - want).abs() < 1e-4 * want,
        "{itself} vs {want}"
    );
    // Naming the model itself as the judge changes nothing.
    assert_eq!(ppl(&eval(Some("model"))), ppl(&itself));
    // Another checkpoint judges the same samples with its own weights.
    let judged = eval(Some("judge"));
    let named = Path::new("judge").join(judge.dir.file_name().unwrap());
    assert_eq!(judged["judge"], named.display().to_string());
    let want = judged_perplexity(&model, &judge, 2, 12);
    assert!(
        (ppl(&judged) - want).abs() < 1e-4 * want,
        "{judged} vs {want}"
    );
    assert!(
        (ppl(&judged) - ppl(&itself)).abs() > 1e-3 * want,
        "the judge's perplexity is the model's own: {judged} vs {itself}"
    );
    // The rest of the report describes the samples, which the judge does not change.
    for k in [
        "unigram_entropy",
        "repeated_4gram_rate",
        "distinct_2",
        "mean_length",
    ] {
        assert_eq!(judged[k], itself[k], "{k}");
    }
}
