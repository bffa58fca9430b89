//! `card export`: a checkpoint as a Hugging Face directory or a llama.cpp GGUF file.

use crate::import::export::{export_gguf, export_hf, parse_gguf_dtype};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// config.json, model.safetensors (f32), tokenizer.json, tokenizer_config.json,
    /// generation_config.json: loads as LlamaForCausalLM (Qwen2ForCausalLM with a q/k/v bias).
    Hf,
    /// One llama.cpp GGUF file (architecture llama or qwen2) with the tokenizer in its metadata.
    Gguf,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    pub checkpoint: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output: a directory (hf) or a file (gguf).
    #[arg(long)]
    pub out: PathBuf,
    /// GGUF matrices: stored (the checkpoint's blocks, f32 when dense), f32, f16 or q8_0.
    #[arg(long, default_value = "stored")]
    pub dtype: String,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!("{} exists (pass --force to replace it)", a.out.display());
    }
    match a.format {
        Format::Hf => {
            if a.dtype != "stored" && a.dtype != "f32" {
                bail!("--dtype: the Hugging Face export is f32");
            }
            export_hf(&a.checkpoint, &a.out)?
        }
        Format::Gguf => export_gguf(&a.checkpoint, &a.out, parse_gguf_dtype(&a.dtype)?)?,
    }
    println!("exported {} to {}", a.checkpoint.display(), a.out.display());
    Ok(())
}
