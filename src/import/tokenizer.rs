//! A `tokenizers` JSON rebuilt from GGUF tokenizer metadata: byte-level BPE (vocabulary and
//! merges), the pre-tokenizer llama.cpp applies for the file's `tokenizer.ggml.pre`, and the
//! control and user-defined tokens as special tokens matched whole in text.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Value as Json};

const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer families we rebuild, by llama.cpp's names.
pub const SUPPORTED_PRE: &str =
    "gpt2, smollm, starcoder, refact, command-r, codeshell, exaone, minerva, llama3, llama-bpe, qwen2";

pub(crate) fn meta<'a>(c: &'a Content, key: &str) -> Option<&'a Value> {
    c.metadata.get(key)
}

pub(crate) fn meta_u32(c: &Content, key: &str) -> Option<u32> {
    meta(c, key).and_then(|v| {
        v.to_u32()
            .ok()
            .or_else(|| v.to_u64().ok().map(|x| x as u32))
    })
}

fn strings(c: &Content, key: &str) -> Result<Vec<String>> {
    let list = meta(c, key)
        .with_context(|| format!("the GGUF file has no {key}"))?
        .to_vec()
        .with_context(|| format!("{key} is not a list"))?;
    list.iter()
        .map(|v| {
            Ok(v.to_string()
                .with_context(|| format!("{key} holds a non-string"))?
                .clone())
        })
        .collect()
}

fn split(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// (normalizer, pre-tokenizer steps, ignore_merges) for a `tokenizer.ggml.pre` name.
fn pipeline(pre: &str) -> Result<(Json, Vec<Json>, bool)> {
    Ok(match pre {
        "gpt2" | "gpt-2" => (Json::Null, vec![byte_level(true)], false),
        // Digits one by one, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            (Json::Null, vec![split(r"\p{N}"), byte_level(true)], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" => {
            (Json::Null, vec![split(LLAMA3), byte_level(false)], true)
        }
        "qwen2" => (
            json!({"type": "NFC"}),
            vec![split(QWEN2), byte_level(false)],
            false,
        ),
        other => {
            bail!("GGUF pre-tokenizer `{other}` is not supported (supported: {SUPPORTED_PRE})")
        }
    })
}

/// The tokenizer JSON of a GGUF file's metadata.
pub fn from_gguf(c: &Content) -> Result<String> {
    let model = meta(c, "tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .context("the GGUF file has no tokenizer (tokenizer.ggml.model)")?;
    if model != "gpt2" {
        bail!("GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)");
    }
    let tokens = strings(c, "tokenizer.ggml.tokens")?;
    let merges = strings(c, "tokenizer.ggml.merges")?;
    let types: Vec<u32> = match meta(c, "tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_i32().map(|x| x as u32).or_else(|_| t.to_u32()))
            .collect::<candle_core::Result<_>>()?,
        None => vec![1; tokens.len()],
    };
    let pre = meta(c, "tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map_or("gpt2", |s| s.as_str());
    let (normalizer, steps, ignore_merges) = pipeline(pre)?;
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    if vocab.len() != tokens.len() {
        bail!("the GGUF vocabulary repeats a token");
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            let (a, b) = m
                .split_once(' ')
                .with_context(|| format!("GGUF merge {m:?} is not two tokens"))?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;
    // Control (3) and user-defined (4) tokens are matched whole, as llama.cpp parses specials;
    // only control tokens are special (as `transformers` marks them: user-defined ones are
    // text), so an export can tell the two apart again.
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == 3 || ty == 4)
        .map(|(id, (t, &ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": ty == 3})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "post_processor": bos_processor(c, &tokens)?,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merges},
    });
    Ok(tokenizer.to_string())
}

/// The post-processor that puts BOS before a text, for a file that asks for one
/// (`tokenizer.ggml.add_bos_token`, as Llama 3's do): `transformers`' template for it.
fn bos_processor(c: &Content, tokens: &[String]) -> Result<Json> {
    let add = meta(c, "tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok());
    if add != Some(true) {
        return Ok(Json::Null);
    }
    let id = meta_u32(c, "tokenizer.ggml.bos_token_id").context(
        "the GGUF file asks for a BOS token but names none (tokenizer.ggml.bos_token_id)",
    )?;
    let bos = tokens
        .get(id as usize)
        .with_context(|| format!("the GGUF BOS token id {id} is past the vocabulary"))?;
    let special = |t: u32| json!({"SpecialToken": {"id": bos, "type_id": t}});
    let seq = |s: &str, t: u32| json!({"Sequence": {"id": s, "type_id": t}});
    let mut specials = serde_json::Map::new();
    specials.insert(
        bos.clone(),
        json!({"id": bos, "ids": [id], "tokens": [bos]}),
    );
    Ok(json!({
        "type": "TemplateProcessing",
        "single": [special(0), seq("A", 0)],
        "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
        "special_tokens": specials,
    }))
}

/// The `tokenizer.ggml.pre` name whose pipeline a tokenizer JSON runs (the inverse of the
/// rebuild, for export), or None for a pipeline llama.cpp would not reproduce.
pub fn pre_name(tokenizer_json: &str) -> Option<&'static str> {
    let t: Json = serde_json::from_str(tokenizer_json).ok()?;
    let pre = &t["pre_tokenizer"];
    let steps: Vec<Json> = match pre["type"].as_str()? {
        "Sequence" => pre["pretokenizers"].as_array()?.clone(),
        _ => vec![pre.clone()],
    };
    // llama.cpp's own names: it refuses "gpt2" (the tokenizer model's name, not a
    // pre-tokenizer's) and knows GPT-2's split as "gpt-2".
    ["gpt-2", "smollm", "llama-bpe", "qwen2"]
        .into_iter()
        .find(|name| {
            let (normalizer, want, _) = pipeline(name).expect("a known name");
            want == steps && normalizer == t["normalizer"]
        })
}

/// GGUF tokenizer metadata of a tokenizer: every id's token, its type (3 for special added
/// tokens, 4 for other added tokens, 1 otherwise), the merges and the pre-tokenizer name.
pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub pre: &'static str,
}

pub fn to_gguf(tok: &tokenizers::Tokenizer, vocab_size: usize) -> Result<GgufVocab> {
    let json = tok
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))?;
    let t: Json = serde_json::from_str(&json)?;
    if t["model"]["type"] != "BPE" {
        bail!("only byte-level BPE tokenizers export to GGUF");
    }
    let pre =
        pre_name(&json).context("the tokenizer's pre-tokenizer has no llama.cpp equivalent")?;
    // Added tokens by id: whether each is special (control) or user-defined.
    let added: std::collections::HashMap<u64, bool> = t["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| Some((x["id"].as_u64()?, x["special"].as_bool() == Some(true))))
                .collect()
        })
        .unwrap_or_default();
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size as u32 {
        let s = tok
            .id_to_token(id)
            .with_context(|| format!("the tokenizer has no token for id {id}"))?;
        tokens.push(s);
        types.push(match added.get(&(id as u64)) {
            Some(true) => 3,
            Some(false) => 4,
            None => 1,
        });
    }
    let merges = t["model"]["merges"]
        .as_array()
        .context("the tokenizer has no merges")?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            _ => bail!("a merge that is not two tokens: {m}"),
        })
        .collect::<Result<_>>()?;
    Ok(GgufVocab {
        tokens,
        types,
        merges,
        pre,
    })
}
