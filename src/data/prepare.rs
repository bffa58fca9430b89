//! Tokenized train/validation token streams, split by whole documents, and their on-disk form.

use super::{Document, TextTokenizer};
use crate::runtime::fsutil::{sync_dir, write_atomic};
use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// Version of the prepared-directory format written in `meta.json`.
pub const FORMAT_VERSION: u32 = 1;
const META: &str = "meta.json";
const TOKENIZER: &str = "tokenizer.json";
const TRAIN: &str = "train.bin";
const VAL: &str = "val.bin";
const HELDOUT: &str = "heldout.bin";

/// Contents of `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedMeta {
    pub format_version: u32,
    pub tokenizer_hash: String,
    pub vocab_size: usize,
    /// `"u16"` (vocab ≤ 65536) or `"u32"`: little-endian width of the ids in the .bin files.
    pub token_dtype: String,
    pub seed: u64,
    pub val_fraction: f64,
    pub train_documents: usize,
    pub val_documents: usize,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub train_bytes: u64,
    pub val_bytes: u64,
    /// Hex SHA-256 of train.bin / val.bin.
    pub train_sha256: String,
    pub val_sha256: String,
    /// Document names in each split, in stream order.
    pub train_sources: Vec<String>,
    pub val_sources: Vec<String>,
    /// Held-out sources: documents set aside by name before the split (never trained on, nor
    /// seen by the tokenizer), one group per pattern, stored in this order in heldout.bin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holdout: Vec<HoldoutGroup>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub heldout_sha256: String,
}

/// The documents one `--holdout` pattern set aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutGroup {
    /// Every document whose name contains this string (and no earlier pattern) is in the group.
    pub pattern: String,
    pub tokens: u64,
    pub bytes: u64,
    pub sources: Vec<String>,
}

/// A tokenized corpus split into train/validation by whole documents. Each stream is the
/// concatenation of its documents' ids, each followed by `eot_id`.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub tokenizer: TextTokenizer,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    /// UTF-8 bytes of the train documents' text (for bits per byte).
    pub train_bytes: u64,
    pub val_bytes: u64,
    /// The held-out sources' stream: the groups of `meta.holdout`, one after the other.
    pub heldout: Vec<u32>,
    pub meta: PreparedMeta,
}

impl Prepared {
    /// (pattern, tokens, bytes) of each held-out source group.
    pub fn heldout_groups(&self) -> Vec<(&str, &[u32], u64)> {
        let mut at = 0;
        self.meta
            .holdout
            .iter()
            .map(|g| {
                let n = g.tokens as usize;
                let ids = &self.heldout[at..at + n];
                at += n;
                (g.pattern.as_str(), ids, g.bytes)
            })
            .collect()
    }

    /// SHA-256 over the token streams' own checksums: what a checkpoint records so that a
    /// resume on different data (behind the same path and tokenizer) is noticed.
    pub fn fingerprint(&self) -> String {
        let both = format!("{}:{}", self.meta.train_sha256, self.meta.val_sha256);
        sha256_hex(both.as_bytes())
    }
}

/// Tokenize `docs` and split them into train/validation by whole documents.
///
/// Whitespace-only documents are dropped. The split shuffles document indices with a PCG
/// generator seeded by `seed`; `round(n × val_fraction)` documents (clamped to 1 ..= n − 1) go to
/// validation; each split keeps the input order of its documents. Without `tokenizer`, a
/// byte-level BPE of `vocab_size` tokens is trained on the TRAIN documents only (no validation
/// leakage); a given tokenizer is used as is and `vocab_size` is ignored.
pub fn prepare(
    docs: Vec<Document>,
    tokenizer: Option<TextTokenizer>,
    vocab_size: usize,
    val_fraction: f64,
    seed: u64,
) -> Result<Prepared> {
    prepare_with_holdout(docs, tokenizer, vocab_size, val_fraction, seed, &[])
}

/// [`prepare`], after setting aside as held-out sources every document whose name contains one
/// of `holdout` (grouped by the first pattern it contains; each pattern must match something).
pub fn prepare_with_holdout(
    docs: Vec<Document>,
    tokenizer: Option<TextTokenizer>,
    vocab_size: usize,
    val_fraction: f64,
    seed: u64,
    holdout: &[String],
) -> Result<Prepared> {
    ensure!(
        val_fraction > 0.0 && val_fraction < 1.0,
        "validation fraction must be strictly between 0 and 1, got {val_fraction}"
    );
    let docs: Vec<Document> = docs
        .into_iter()
        .filter(|d| !d.text.trim().is_empty())
        .collect();
    let mut groups: Vec<Vec<Document>> = vec![Vec::new(); holdout.len()];
    // Held-out documents keep their input order within a group.
    let docs: Vec<Document> = docs
        .into_iter()
        .filter_map(
            |d| match holdout.iter().position(|p| d.name.contains(p.as_str())) {
                Some(g) => {
                    groups[g].push(d);
                    None
                }
                None => Some(d),
            },
        )
        .collect();
    for (p, g) in holdout.iter().zip(&groups) {
        ensure!(!p.is_empty(), "a holdout pattern is empty");
        ensure!(
            !g.is_empty(),
            "holdout pattern {p:?} matches no document name"
        );
    }
    let n = docs.len();
    if n < 2 {
        bail!("need at least 2 non-empty documents to split into train and validation, got {n} (each input file is one document: pass several files or a directory)");
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_pcg::Pcg64::seed_from_u64(seed));
    let n_val = ((n as f64 * val_fraction).round() as usize).clamp(1, n - 1);
    let mut val_idx = order[..n_val].to_vec();
    let mut train_idx = order[n_val..].to_vec();
    val_idx.sort_unstable();
    train_idx.sort_unstable();
    let mut slots: Vec<Option<Document>> = docs.into_iter().map(Some).collect();
    let mut take = |idx: &[usize]| -> Vec<Document> {
        idx.iter()
            .map(|&i| slots[i].take().expect("index used once"))
            .collect()
    };
    let train_docs = take(&train_idx);
    let val_docs = take(&val_idx);

    let tokenizer = match tokenizer {
        Some(t) => t,
        None => TextTokenizer::train(&train_docs, vocab_size)?,
    };
    ensure!(
        tokenizer.vocab_size() <= u32::MAX as usize,
        "vocab size {} does not fit in u32",
        tokenizer.vocab_size()
    );
    let (train, train_bytes) = encode_split(&tokenizer, &train_docs)?;
    let (val, val_bytes) = encode_split(&tokenizer, &val_docs)?;
    let mut heldout = Vec::new();
    let mut holdout_meta = Vec::new();
    for (p, g) in holdout.iter().zip(&groups) {
        let (ids, bytes) = encode_split(&tokenizer, g)?;
        holdout_meta.push(HoldoutGroup {
            pattern: p.clone(),
            tokens: ids.len() as u64,
            bytes,
            sources: g.iter().map(|d| d.name.clone()).collect(),
        });
        heldout.extend(ids);
    }
    let dtype = dtype_for(tokenizer.vocab_size());
    let names = |d: &[Document]| d.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
    let meta = PreparedMeta {
        format_version: FORMAT_VERSION,
        tokenizer_hash: tokenizer.hash(),
        vocab_size: tokenizer.vocab_size(),
        token_dtype: dtype_for(tokenizer.vocab_size()).to_string(),
        seed,
        val_fraction,
        train_documents: train_docs.len(),
        val_documents: val_docs.len(),
        train_tokens: train.len() as u64,
        val_tokens: val.len() as u64,
        train_bytes,
        val_bytes,
        train_sha256: sha256_hex(&to_bytes(&train, dtype_for(tokenizer.vocab_size()))),
        val_sha256: sha256_hex(&to_bytes(&val, dtype_for(tokenizer.vocab_size()))),
        train_sources: names(&train_docs),
        val_sources: names(&val_docs),
        heldout_sha256: if heldout.is_empty() {
            String::new()
        } else {
            sha256_hex(&to_bytes(&heldout, dtype))
        },
        holdout: holdout_meta,
    };
    Ok(Prepared {
        tokenizer,
        train,
        val,
        train_bytes,
        val_bytes,
        heldout,
        meta,
    })
}

/// Encode documents in parallel; returns the EOT-separated stream and the UTF-8 byte count.
fn encode_split(tok: &TextTokenizer, docs: &[Document]) -> Result<(Vec<u32>, u64)> {
    let encoded: Vec<Vec<u32>> = docs
        .par_iter()
        .map(|d| {
            tok.encode(&d.text)
                .with_context(|| format!("cannot encode {}", d.name))
        })
        .collect::<Result<_>>()?;
    let total: usize = encoded.iter().map(|e| e.len() + 1).sum();
    let mut stream = Vec::with_capacity(total);
    for ids in encoded {
        stream.extend_from_slice(&ids);
        stream.push(tok.eot_id());
    }
    let bytes = docs.iter().map(|d| d.text.len() as u64).sum();
    Ok((stream, bytes))
}

fn dtype_for(vocab_size: usize) -> &'static str {
    if vocab_size <= 1 << 16 {
        "u16"
    } else {
        "u32"
    }
}

fn width(dtype: &str) -> Result<usize> {
    match dtype {
        "u16" => Ok(2),
        "u32" => Ok(4),
        other => bail!("unknown token dtype {other:?} (expected \"u16\" or \"u32\")"),
    }
}

fn to_bytes(ids: &[u32], dtype: &str) -> Vec<u8> {
    if dtype == "u16" {
        ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect()
    } else {
        ids.iter().flat_map(|&i| i.to_le_bytes()).collect()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `dir` holds a prepared corpus (has a meta.json).
pub fn is_prepared_dir(dir: &Path) -> bool {
    dir.join(META).is_file()
}

/// Sibling of `dir` with a hidden, process-specific name.
fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "prepared".into());
    dir.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

impl Prepared {
    /// Write `tokenizer.json`, `train.bin`, `val.bin` (little-endian u16 when vocab ≤ 65536,
    /// else u32; recorded in meta) and `meta.json`, each atomically, into a staging directory
    /// next to `dir` that then replaces `dir`. Refuses to replace an existing non-empty
    /// directory that is not a prepared directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            ensure!(
                dir.is_dir(),
                "{} exists and is not a directory",
                dir.display()
            );
            let empty = fs::read_dir(dir)?.next().is_none();
            ensure!(
                empty || is_prepared_dir(dir),
                "refusing to overwrite {}: it is not empty and not a prepared corpus (no {META})",
                dir.display()
            );
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let staging = sibling(dir, "staging");
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
        let written = (|| -> Result<()> {
            self.tokenizer.save(&staging.join(TOKENIZER))?;
            write_atomic(
                &staging.join(TRAIN),
                &to_bytes(&self.train, &self.meta.token_dtype),
            )?;
            write_atomic(
                &staging.join(VAL),
                &to_bytes(&self.val, &self.meta.token_dtype),
            )?;
            if !self.meta.holdout.is_empty() {
                write_atomic(
                    &staging.join(HELDOUT),
                    &to_bytes(&self.heldout, &self.meta.token_dtype),
                )?;
            }
            let meta = serde_json::to_string_pretty(&self.meta)?;
            write_atomic(&staging.join(META), meta.as_bytes())
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&staging);
            return Err(e.context(format!("cannot save prepared corpus to {}", dir.display())));
        }
        let old = sibling(dir, "old");
        if dir.exists() {
            fs::rename(dir, &old)
                .with_context(|| format!("cannot move old {} aside", dir.display()))?;
        }
        fs::rename(&staging, dir)
            .with_context(|| format!("cannot move {} to {}", staging.display(), dir.display()))?;
        sync_dir(dir.parent());
        if old.exists() {
            fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove old {}", old.display()))?;
        }
        Ok(())
    }

    /// The same corpus with another training stream (`bytes` of text, from `sources`): the
    /// validation split and tokenizer are kept, the metadata recomputed.
    pub fn with_train(&self, train: Vec<u32>, bytes: u64, sources: Vec<String>) -> Prepared {
        let mut meta = self.meta.clone();
        meta.train_documents = sources.len();
        meta.train_tokens = train.len() as u64;
        meta.train_bytes = bytes;
        meta.train_sha256 = sha256_hex(&to_bytes(&train, &meta.token_dtype));
        meta.train_sources = sources;
        Prepared {
            tokenizer: self.tokenizer.clone(),
            train,
            val: self.val.clone(),
            train_bytes: bytes,
            val_bytes: self.val_bytes,
            heldout: self.heldout.clone(),
            meta,
        }
    }

    /// Load and validate a prepared directory: all files present, meta readable, tokenizer hash
    /// and vocab size as recorded, .bin sizes and SHA-256 as recorded, every id < vocab size.
    pub fn load(dir: &Path) -> Result<Self> {
        ensure!(
            dir.is_dir(),
            "prepared corpus {} does not exist",
            dir.display()
        );
        for f in [META, TOKENIZER, TRAIN, VAL] {
            ensure!(
                dir.join(f).is_file(),
                "{} is not a complete prepared corpus: {f} is missing",
                dir.display()
            );
        }
        let meta_path = dir.join(META);
        let meta: PreparedMeta = serde_json::from_slice(&fs::read(&meta_path)?)
            .with_context(|| format!("invalid {}", meta_path.display()))?;
        ensure!(
            meta.format_version == FORMAT_VERSION,
            "{}: format version {} is not supported (expected {FORMAT_VERSION})",
            meta_path.display(),
            meta.format_version
        );
        let tokenizer = TextTokenizer::from_file(&dir.join(TOKENIZER))?;
        ensure!(
            tokenizer.hash() == meta.tokenizer_hash,
            "{}: tokenizer hash {} does not match {} recorded in meta.json",
            dir.join(TOKENIZER).display(),
            tokenizer.hash(),
            meta.tokenizer_hash
        );
        ensure!(
            tokenizer.vocab_size() == meta.vocab_size,
            "{}: tokenizer vocab size {} does not match {} recorded in meta.json",
            dir.display(),
            tokenizer.vocab_size(),
            meta.vocab_size
        );
        let w = width(&meta.token_dtype)?;
        let read = |name: &str, tokens: u64, sha: &str| -> Result<Vec<u32>> {
            let path = dir.join(name);
            let bytes =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let expected = tokens.checked_mul(w as u64);
            ensure!(
                Some(bytes.len() as u64) == expected,
                "{} has {} bytes but meta.json records {tokens} {} tokens: truncated or corrupt",
                path.display(),
                bytes.len(),
                meta.token_dtype
            );
            ensure!(
                sha256_hex(&bytes) == sha,
                "{}: SHA-256 does not match meta.json: file is corrupt",
                path.display()
            );
            let ids: Vec<u32> = if w == 2 {
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                    .collect()
            } else {
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            if let Some(pos) = ids.iter().position(|&i| i as usize >= meta.vocab_size) {
                bail!(
                    "{}: token {pos} has id {} ≥ vocab size {}",
                    path.display(),
                    ids[pos],
                    meta.vocab_size
                );
            }
            Ok(ids)
        };
        let train = read(TRAIN, meta.train_tokens, &meta.train_sha256)?;
        let val = read(VAL, meta.val_tokens, &meta.val_sha256)?;
        let heldout = if meta.holdout.is_empty() {
            Vec::new()
        } else {
            let tokens = meta.holdout.iter().map(|g| g.tokens).sum();
            read(HELDOUT, tokens, &meta.heldout_sha256)?
        };
        Ok(Prepared {
            tokenizer,
            train,
            val,
            train_bytes: meta.train_bytes,
            val_bytes: meta.val_bytes,
            heldout,
            meta,
        })
    }
}
