//! Byte-level BPE tokenizer wrapping the `tokenizers` crate.

use super::{Document, EOT, MASK};
use crate::runtime::fsutil::write_atomic;
use anyhow::{anyhow, bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::str::FromStr;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Model, Tokenizer};

/// Number of base symbols of a byte-level BPE: one per byte value.
const BYTE_ALPHABET: usize = 256;

/// A text tokenizer with the special tokens [`EOT`] and [`MASK`].
///
/// Tokenizers trained by [`TextTokenizer::train`] are byte-level BPEs (no normalizer, GPT-2 style
/// pre-tokenization without prefix space), so `decode(encode(s)) == s` for every string; EOT and
/// MASK have ids 0 and 1. Tokenizers loaded from a file keep their own ids; a missing EOT or MASK
/// is added as a special token (the `tokenizers` crate gives it the next id after the
/// vocabulary; loading fails if that id is already taken).
///
/// Special-token strings occurring literally in the text are encoded as those special tokens
/// (the `tokenizers` default); decoding keeps special tokens, so the round trip stays exact.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    eot: u32,
    mask: u32,
    vocab_size: usize,
    json: String,
    /// The token a prompt starts with, where the tokenizer's post-processor adds one
    /// (`add_bos_token`: Llama 3 and other models trained with it).
    bos: Option<u32>,
}

/// The special token a tokenizer JSON's post-processor puts before a single text: the first
/// piece of a `TemplateProcessing` (alone or within a `Sequence`) when it is a special token.
fn bos_token(json: &serde_json::Value) -> Option<String> {
    let pp = &json["post_processor"];
    let template = match pp["type"].as_str()? {
        "TemplateProcessing" => pp,
        "Sequence" => pp["processors"]
            .as_array()?
            .iter()
            .find(|p| p["type"] == "TemplateProcessing")?,
        _ => return None,
    };
    let first = template["single"].as_array()?.first()?;
    Some(first["SpecialToken"]["id"].as_str()?.to_string())
}

fn tk_err(
    what: &str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

impl TextTokenizer {
    /// Train a byte-level BPE on `docs` with `vocab_size` tokens in total, counting the 256 byte
    /// symbols and the special tokens EOT (id 0) and MASK (id 1). Deterministic for the same
    /// input. The result can be smaller than `vocab_size` when the corpus runs out of pairs to
    /// merge (every pre-token already a single symbol).
    pub fn train(docs: &[Document], vocab_size: usize) -> Result<Self> {
        let min = BYTE_ALPHABET + 2 + 1;
        if vocab_size < min {
            bail!("vocab size {vocab_size} is too small: a byte-level BPE needs at least {min} (256 bytes + EOT + MASK + 1 merge)");
        }
        if vocab_size > u32::MAX as usize {
            bail!("vocab size {vocab_size} does not fit in u32 ids");
        }
        if docs.iter().all(|d| d.text.trim().is_empty()) {
            bail!("cannot train a tokenizer on an empty corpus");
        }
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(vec![
                AddedToken::from(EOT, true),
                AddedToken::from(MASK, true),
            ])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::from(trainer);
        tokenizer
            .train(&mut trainer, docs.iter().map(|d| d.text.as_str()))
            .map_err(tk_err("tokenizer training failed"))?;
        let json = tokenizer
            .to_string(false)
            .map_err(tk_err("cannot serialise tokenizer"))?;
        let tok = Self::from_json(&json)?;
        if tok.eot != 0 || tok.mask != 1 {
            bail!(
                "internal error: trained tokenizer has EOT id {} and MASK id {}",
                tok.eot,
                tok.mask
            );
        }
        Ok(tok)
    }

    /// Load a `tokenizer.json` (any `tokenizers` format). See [`TextTokenizer::from_json`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read tokenizer {}", path.display()))?;
        Self::from_json(&json).with_context(|| format!("invalid tokenizer {}", path.display()))
    }

    /// Parse a tokenizer from its JSON. EOT and MASK are looked up by content; either one that
    /// is missing is added as a special token, with the id the `tokenizers` crate assigns (the
    /// model's vocabulary size, then upwards); an error if that id is already in use.
    pub fn from_json(json: &str) -> Result<Self> {
        // tokenizers 0.22 panics (`expect("Helper")`) on a decoder section it cannot read, a
        // truncated file included: check the syntax first, and turn any panic into an error.
        let parsed: serde_json::Value =
            serde_json::from_str(json).map_err(|e| anyhow!("cannot parse tokenizer JSON: {e}"))?;
        let mut inner = std::panic::catch_unwind(|| Tokenizer::from_str(json))
            .map_err(|_| anyhow!("cannot parse tokenizer JSON: the tokenizers crate rejected it"))?
            .map_err(tk_err("cannot parse tokenizer JSON"))?;
        for special in [EOT, MASK] {
            if inner.token_to_id(special).is_none() {
                inner.add_special_tokens(&[AddedToken::from(special, true)]);
                let id = inner
                    .token_to_id(special)
                    .ok_or_else(|| anyhow!("cannot add {special} to the tokenizer"))?;
                // The crate picks the id after the model vocabulary's size; with gaps in the
                // vocabulary that id can already belong to another token.
                if let Some(other) = inner.get_model().id_to_token(id) {
                    bail!("cannot add {special}: its new id {id} is already used by {other:?}; add {special} to the tokenizer JSON yourself");
                }
            }
        }
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| anyhow!("tokenizer has no id for {t}"))
        };
        let (eot, mask) = (id(EOT)?, id(MASK)?);
        for (token, id) in [(EOT, eot), (MASK, mask)] {
            let back = inner
                .decode(&[id], false)
                .map_err(tk_err("decoding failed"))?;
            ensure!(
                back == token,
                "tokenizer id {id} of {token} decodes to {back:?}"
            );
        }
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let json = inner
            .to_string(false)
            .map_err(tk_err("cannot serialise tokenizer"))?;
        let bos = match bos_token(&parsed) {
            Some(t) => Some(inner.token_to_id(&t).ok_or_else(|| {
                anyhow!("the tokenizer's post-processor starts with {t:?}, which it has no id for")
            })?),
            None => None,
        };
        Ok(Self {
            inner,
            eot,
            mask,
            vocab_size,
            json,
            bos,
        })
    }

    /// The canonical (compact) JSON of this tokenizer; [`TextTokenizer::hash`] hashes it.
    pub fn to_json(&self) -> Result<String> {
        Ok(self.json.clone())
    }

    /// Write the tokenizer JSON (pretty-printed) atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let pretty = self
            .inner
            .to_string(true)
            .map_err(tk_err("cannot serialise tokenizer"))?;
        write_atomic(path, pretty.as_bytes())
            .with_context(|| format!("cannot save tokenizer to {}", path.display()))
    }

    /// Token ids of `text`, without adding any special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(tk_err("encoding failed"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A prompt's token ids: the model's BOS first where it expects one (unless the text
    /// already starts with it, as a chat template writes it), and `<|endoftext|>` for an empty
    /// text of a model without BOS, so there is always a token to predict from.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        match self.bos {
            Some(b) if ids.first() != Some(&b) => ids.insert(0, b),
            None if ids.is_empty() => ids.push(self.eot),
            _ => {}
        }
        Ok(ids)
    }

    /// The token every prompt starts with, for a model trained with one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Text of `ids` (special tokens included as their strings). Errors on an unknown id.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            bail!(
                "token id {bad} is out of range (vocab size {})",
                self.vocab_size
            );
        }
        self.inner
            .decode(ids, false)
            .map_err(tk_err("decoding failed"))
    }

    /// Size of the id space, special tokens included (largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn eot_id(&self) -> u32 {
        self.eot
    }

    pub fn mask_id(&self) -> u32 {
        self.mask
    }

    /// Hex SHA-256 of the canonical JSON.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.json.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
