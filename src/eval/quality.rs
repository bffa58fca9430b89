//! Quality proxies of generated token sequences.

use crate::model::{ops, Attention, Transformer};
use candle_core::{Result, Tensor};
use std::collections::{HashMap, HashSet};

/// Shannon entropy (bits) of the token unigram distribution of one sample.
pub fn unigram_entropy(tokens: &[u32]) -> f64 {
    if tokens.is_empty() {
        return 0.0;
    }
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &t in tokens {
        *counts.entry(t).or_default() += 1;
    }
    let n = tokens.len() as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Fraction of n-grams that repeat an earlier n-gram of the same sample (0 = none repeat).
pub fn repeated_ngram_rate(tokens: &[u32], n: usize) -> f64 {
    if n == 0 || tokens.len() < n {
        return 0.0;
    }
    let total = tokens.len() - n + 1;
    let distinct: HashSet<&[u32]> = tokens.windows(n).collect();
    (total - distinct.len()) as f64 / total as f64
}

/// Distinct n-grams over all n-grams (distinct-n).
pub fn distinct_n(tokens: &[u32], n: usize) -> f64 {
    if n == 0 || tokens.len() < n {
        return 0.0;
    }
    1.0 - repeated_ngram_rate(tokens, n)
}

/// How `model` scores `continuation` after `prompt` on the path it decodes with (the host
/// backend's kernels where it applies, `--int8` included), teacher-forced in one cached
/// pass: the mean NLL (nats/token) and how many of the tokens are its own greedy pick.
pub fn decoded_scores(
    model: &Transformer,
    prompt: &[u32],
    continuation: &[u32],
) -> anyhow::Result<(f64, usize)> {
    use crate::model::{Backend, Session};
    anyhow::ensure!(!prompt.is_empty(), "decoded_scores: an empty prompt");
    let all: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
    // Keep the end if the whole text is longer than the context, as `continuation_nll` does.
    let all = &all[all.len().saturating_sub(model.cfg.max_seq_len + 1)..];
    let (fed, n) = (all.len() - 1, continuation.len().min(all.len() - 1));
    let backend = Backend::for_model(model);
    let mut session = Session::new(model, backend, 1, fed, 0, 0)?;
    session.forward(&[all[..fed].to_vec()])?;
    let (mut nll, mut picks) = (0.0, 0);
    for (j, &target) in all[all.len() - n..].iter().enumerate() {
        let logits = session.logits(0, fed - n + j);
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let z: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
        nll += max + z.ln() - logits[target as usize] as f64;
        picks += usize::from(logits[target as usize] as f64 == max);
    }
    Ok((nll / n.max(1) as f64, picks))
}

/// Mean NLL (nats/token) of `continuation` given `prompt` under `model` (exact, causal).
pub fn continuation_nll(model: &Transformer, prompt: &[u32], continuation: &[u32]) -> Result<f64> {
    if continuation.is_empty() || prompt.is_empty() {
        return Ok(f64::NAN);
    }
    let all: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
    let ctx = model.cfg.max_seq_len;
    // Keep the end if the whole text is longer than the context.
    let all = &all[all.len().saturating_sub(ctx + 1)..];
    let n = continuation.len().min(all.len() - 1);
    let input = Tensor::from_slice(&all[..all.len() - 1], (1, all.len() - 1), model.device())?;
    let logits = model.forward(&input, Attention::Causal, None)?.squeeze(0)?;
    let logits = logits.narrow(0, all.len() - 1 - n, n)?;
    let targets = Tensor::from_slice(&all[all.len() - n..], n, model.device())?;
    let nll = ops::token_nll(&logits, &targets)?;
    nll.to_dtype(candle_core::DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_constant_sequences() {
        assert!((unigram_entropy(&[1, 2, 3, 4, 5, 6, 7, 8]) - 3.0).abs() < 1e-12);
        assert_eq!(unigram_entropy(&[5; 10]), 0.0);
    }

    #[test]
    fn repeated_ngrams_of_a_loop() {
        // "a b c a b c a b c": 7 trigrams, 3 distinct, so 4 repeat an earlier one.
        let seq = [1, 2, 3, 1, 2, 3, 1, 2, 3];
        assert!((repeated_ngram_rate(&seq, 3) - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(repeated_ngram_rate(&[1, 2, 3, 4, 5], 2), 0.0);
        assert!((distinct_n(&seq, 3) - 3.0 / 7.0).abs() < 1e-12);
    }
}
