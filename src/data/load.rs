//! The data a config names, and the fixed evaluation windows cut from a split.

use super::{embedded_documents, prepare, Prepared, TextTokenizer};
use crate::config::Config;
use anyhow::{bail, Result};
use std::path::Path;

/// The data a config names: a prepared directory, or the embedded default corpus tokenized
/// here (with `tokenizer` when continuing a run, so ids match the checkpoint), its training
/// split cut to `data.train_tokens` when set.
pub fn load_data(cfg: &Config, tokenizer: Option<TextTokenizer>) -> Result<Prepared> {
    let mut data = load_full(cfg, tokenizer)?;
    if cfg.data.train_tokens > 0 && cfg.data.train_tokens < data.train.len() {
        // Bytes scale with the kept fraction (used only for reporting).
        let kept = cfg.data.train_tokens as f64 / data.train.len() as f64;
        data.train.truncate(cfg.data.train_tokens);
        data.train_bytes = (data.train_bytes as f64 * kept) as u64;
    }
    Ok(data)
}

fn load_full(cfg: &Config, tokenizer: Option<TextTokenizer>) -> Result<Prepared> {
    if !cfg.data.path.is_empty() {
        let path = Path::new(&cfg.data.path);
        if !path.exists() {
            bail!(
                "prepared corpus {} does not exist: make it with `card data prepare --out {}` (the `cpu` preset's corpus: `card data fetch --eval`, then `card data prepare --out data/prepared/cpu --holdout brown/cj,gutenberg/shakespeare-`)",
                path.display(),
                path.display()
            );
        }
        let data = Prepared::load(path)?;
        if let Some(tok) = tokenizer {
            if tok.hash() != data.tokenizer.hash() {
                bail!(
                    "data at {} uses another tokenizer than the checkpoint",
                    cfg.data.path
                );
            }
        }
        return Ok(data);
    }
    prepare(
        embedded_documents(),
        tokenizer,
        cfg.data.vocab_size,
        cfg.data.val_fraction,
        cfg.data.seed,
    )
}

/// Non-overlapping evaluation windows of a split: all of them, or `max` spread evenly over the
/// split (so that a capped evaluation still reads every part of it, not only its first
/// documents).
pub fn eval_windows(tokens: &[u32], seq_len: usize, max: Option<usize>) -> Vec<&[u32]> {
    let n = tokens.len() / seq_len;
    if n == 0 && tokens.len() >= 2 {
        return vec![tokens];
    }
    let k = max.map_or(n, |m| n.min(m));
    (0..k)
        .map(|i| {
            let w = i * n / k;
            &tokens[w * seq_len..(w + 1) * seq_len]
        })
        .collect()
}
