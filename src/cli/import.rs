//! `card import`: a pretrained Llama-family model (GGUF file or Hugging Face directory) as a
//! `card` checkpoint.

use crate::import::{import, ImportOptions};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A llama.cpp `.gguf` file (architectures llama, qwen2) or a Hugging Face directory
    /// (config.json, model.safetensors, tokenizer.json; Llama, Mistral, Qwen2).
    pub source: PathBuf,
    /// Output run directory (its checkpoint is step 0, objective AR).
    #[arg(long)]
    pub out: PathBuf,
    /// Store every matrix in these blocks instead of the source's (f32, q8_0, q4_0, q4_1,
    /// q4_k, q6_k) [default: as the source has them; f32 for a Hugging Face directory].
    #[arg(long, value_name = "TYPE")]
    pub quantize: Option<String>,
    /// Replace an existing checkpoint in --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ImportArgs) -> Result<()> {
    if a.out.join("latest").exists() && !a.force {
        bail!(
            "{} already holds a checkpoint (pass --force to replace it)",
            a.out.display()
        );
    }
    if let Some(q) = &a.quantize {
        crate::import::parse_quant(q).map_err(|e| anyhow::anyhow!("--quantize: {e}"))?;
    }
    let r = import(&ImportOptions {
        source: a.source,
        out: a.out,
        quantize: a.quantize,
    })?;
    let c = &r.config;
    let p = &r.provenance;
    let types: Vec<String> = p
        .tensor_types
        .iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect();
    println!(
        "imported {} ({} {}): {} layers, d {}, {} heads / {} kv, ffn {}, vocab {}, context {}; matrices {}",
        p.name.as_deref().unwrap_or("model"),
        p.format,
        p.architecture,
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.kv_heads(),
        c.d_ff,
        c.vocab_size,
        c.max_seq_len,
        types.join(", ")
    );
    for (tok, id) in &p.added_tokens {
        println!("added {tok} as id {id} (embedding at the mean row)");
    }
    println!("checkpoint: {}", r.checkpoint.display());
    Ok(())
}
