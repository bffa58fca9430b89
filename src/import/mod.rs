//! `card import`: a pretrained Llama-family model (a llama.cpp GGUF file or a Hugging Face
//! directory) → a `card` checkpoint directory: config, weights (GGUF blocks kept as they came,
//! or f32), tokenizer, provenance and chat template. The vocabulary gains `[MASK]` (and
//! `<|endoftext|>` where the model lacks it), with embedding and head rows at the mean row.

pub mod export;
pub mod fetch;
mod gguf;
mod hf;
mod rows;
mod source;
pub mod tokenizer;

use crate::checkpoint::{self, Checkpoint, TrainState};
use crate::config::{Config, ModelConfig};
pub use crate::data::chat::ChatInfo;
use crate::data::TextTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use source::Source;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `provenance.json`: what a checkpoint was imported from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    pub source: String,
    pub source_sha256: String,
    pub format: String,
    pub architecture: String,
    pub name: Option<String>,
    pub license: Option<String>,
    /// Block types of the stored matrices (e.g. {"q4_1": 210, "q8_0": 1}).
    pub tensor_types: BTreeMap<String, usize>,
    /// Tokens added to the vocabulary, with the row they got.
    pub added_tokens: Vec<(String, u32)>,
    pub requantized: Option<String>,
}

/// Block types `--quantize` accepts.
pub const QUANT_TYPES: &str = "f32, q8_0, q4_0, q4_1, q4_k, q6_k";

pub fn parse_quant(s: &str) -> Result<Option<GgmlDType>> {
    Ok(Some(match s.to_ascii_lowercase().as_str() {
        "f32" => return Ok(None),
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q4_k" => GgmlDType::Q4K,
        "q6_k" => GgmlDType::Q6K,
        other => bail!("unknown block type `{other}` (one of: {QUANT_TYPES})"),
    }))
}

/// What `card import` does.
pub struct ImportOptions {
    pub source: PathBuf,
    pub out: PathBuf,
    /// Keep the source's blocks (None), or store every matrix as f32 or in these blocks.
    pub quantize: Option<String>,
}

pub struct ImportReport {
    pub checkpoint: PathBuf,
    pub provenance: Provenance,
    pub config: ModelConfig,
}

fn sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Read the source: a `.gguf` file or a Hugging Face directory.
pub fn read_source(path: &Path) -> Result<Source> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    if path.is_dir() {
        hf::read(path)
    } else {
        gguf::read(path)
    }
}

/// Import `opts.source` into the checkpoint directory `opts.out` (a run directory whose
/// `latest` is step 0).
pub fn import(opts: &ImportOptions) -> Result<ImportReport> {
    let mut src = read_source(&opts.source)
        .with_context(|| format!("cannot import {}", opts.source.display()))?;
    let tok = TextTokenizer::from_json(&src.tokenizer_json)?;
    let base = src.config.vocab_size;
    let extra = tok.vocab_size().checked_sub(base).with_context(|| {
        format!(
            "the tokenizer has {} ids, the embedding {base} rows",
            tok.vocab_size()
        )
    })?;
    let mut added = Vec::new();
    for id in base..tok.vocab_size() {
        added.push((tok.decode(&[id as u32])?, id as u32));
    }
    for (name, t) in src.tensors.iter_mut() {
        if name == "embed.weight" || name == "head.weight" {
            *t = rows::append_mean_rows(t, extra)?;
        }
    }
    src.config.vocab_size = tok.vocab_size();
    // One key/value head per query head is plain attention: saved as our presets save it.
    if src.config.n_kv_heads == Some(src.config.n_heads) {
        src.config.n_kv_heads = None;
    }
    let quant = opts.quantize.as_deref().map(parse_quant).transpose()?;
    let tensors = match quant {
        Some(Some(dtype)) => rows::requantize(&src.tensors, dtype)?,
        _ => std::mem::take(&mut src.tensors),
    };
    let dense = quant == Some(None);
    let mut tensor_types = BTreeMap::new();
    for (_, t) in &tensors {
        if t.shape().rank() == 2 {
            let name = if dense {
                "f32".into()
            } else {
                format!("{:?}", t.dtype()).to_lowercase()
            };
            *tensor_types.entry(name).or_insert(0) += 1;
        }
    }
    let provenance = Provenance {
        source: std::fs::canonicalize(&opts.source)?.display().to_string(),
        source_sha256: if opts.source.is_file() {
            sha256(&opts.source)?
        } else {
            String::new()
        },
        format: src.format.into(),
        architecture: src.architecture.clone(),
        name: src.name.clone(),
        license: src.license.clone(),
        tensor_types,
        added_tokens: added,
        requantized: opts.quantize.clone(),
    };
    let mut config = Config {
        model: src.config.clone(),
        ..Config::default()
    };
    config.data.vocab_size = tok.vocab_size();
    config.train.objective = src.objective;
    config.train.seq_len = config.train.seq_len.min(config.model.max_seq_len);
    config.validate()?;
    // Built in the blocks (expanded only for an f32 import): the check that they fit.
    let weights = crate::checkpoint::gguf::weights(&config.model, &tensors, !dense)
        .and_then(|w| Ok(crate::model::Transformer::from_weights(&config.model, w)?))
        .context("the imported weights do not fit the model")?;
    let mut extra_files = BTreeMap::new();
    extra_files.insert(
        "provenance.json".into(),
        serde_json::to_string_pretty(&provenance)?,
    );
    if let Some(chat) = &src.chat {
        extra_files.insert("chat.json".into(), serde_json::to_string_pretty(chat)?);
    }
    let ckpt = Checkpoint {
        dir: PathBuf::new(),
        state: TrainState {
            format_version: checkpoint::FORMAT_VERSION,
            step: 0,
            data_cursor: 0,
            tokens_seen: 0,
            seed: 0,
            tokenizer_hash: tok.hash(),
            last_val_loss: None,
            elapsed_s: 0.0,
            init_from: None,
            data_sha256: None,
        },
        config: config.clone(),
        tokenizer_json: tok.to_json()?,
        weights: if dense {
            weights.dense_tensors()?
        } else {
            Default::default()
        },
        ema: None,
        optim: None,
        quantized: (!dense).then_some(tensors),
        device: candle_core::Device::Cpu,
        extra: extra_files,
    };
    let dir = checkpoint::save(&opts.out, &ckpt)?;
    Ok(ImportReport {
        checkpoint: dir,
        provenance,
        config: config.model,
    })
}
