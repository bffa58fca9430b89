//! `card generate`: decode from a checkpoint with AR or CARD dynamic parallel decoding (or
//! the MDLM / BD3LM samplers for those baselines), printing statistics, optionally streaming
//! committed text and writing a per-step trace.

use super::values::choice;
use crate::checkpoint::{self, Precision};
use crate::config::Config;
use crate::data::chat::{ChatFormat, Message, Role};
use crate::data::TextTokenizer;
use crate::decode::text::{cut_at_stop, prompt_tokens, step_json, StopScan, TextStream};
use crate::decode::{
    CardDecoder, CommitMode, Decoder, DecoderSpec, Floor, GenOptions, Generation, Knobs, Reveal,
    Sampling, StepTrace,
};
use crate::model::Transformer;
use crate::runtime::device as default_device;
use anyhow::{bail, Context, Result};
use clap::builder::PossibleValuesParser;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Truncate {
    /// Keep the end of an over-long prompt.
    Left,
}

/// Decoder settings, shared by `generate` and `eval --generation`.
#[derive(clap::Args, Debug, Clone)]
pub struct DecoderArgs {
    /// CARD: K, slots decoded in parallel; verify: K, [MASK] slots drafting per pass (and
    /// the most drafts a pass checks) [default: 8 for card, 2 for verify].
    #[arg(long)]
    pub block_size: Option<usize>,
    /// CARD: T_max, passes after which a block's remaining slots are filled.
    #[arg(long, default_value_t = CardDecoder::default().step_limit)]
    pub step_limit: usize,
    /// CARD (and BD3LM --reveal confidence): τ in [0, 1], commit slots at least this confident.
    #[arg(long, default_value_t = CardDecoder::default().threshold)]
    pub threshold: f64,
    /// CARD: the slot committed when none reaches τ.
    #[arg(long, value_parser = choice::<Floor>(), default_value = "leftmost")]
    pub floor: Floor,
    #[arg(long, value_parser = choice::<CommitMode>(), default_value = "block")]
    pub commit: CommitMode,
    /// MDLM: denoising steps over the canvas; BD3LM: steps per block (its block size is the
    /// checkpoint's) [default: MDLM one per new token, BD3LM one per block slot].
    #[arg(long)]
    pub steps: Option<usize>,
    /// verify: L, the most drafts prompt lookup copies from the text per pass (what followed
    /// the latest earlier occurrence of the last 2–3 tokens) [default: 8]; 0: none. With
    /// --block-size 0 the drafts come from lookup alone, which suits ARM checkpoints too (and
    /// is verify's default there).
    #[arg(long)]
    pub lookup: Option<usize>,
    /// verify: the cost of one more position in a pass, relative to a one-position pass, by
    /// which the budget sizes drafts and [MASK] slots [default: fitted to the passes' own
    /// timings as it decodes]; 0 sends every slot and draft offered.
    #[arg(long)]
    pub draft_cost: Option<f64>,
    /// verify: the most alternative positions a pass adds beside its main chain of drafts, as
    /// a draft tree (the other source's drafts, a second lookup continuation, the first mask
    /// draft's runners-up), sent only while they pay [default: 0, a chain].
    #[arg(long)]
    pub tree: Option<usize>,
    /// BD3LM: reveal slots ancestrally or by confidence (≥ --threshold).
    #[arg(long, value_parser = choice::<Reveal>(), default_value = "ancestral")]
    pub reveal: Reveal,
}

impl DecoderArgs {
    /// The decoder `name` (default: the checkpoint's own) with these settings, refused when it
    /// cannot run the checkpoint.
    pub fn spec(&self, name: Option<&str>, cfg: &Config) -> Result<DecoderSpec> {
        let knobs = Knobs {
            block_size: self.block_size,
            step_limit: Some(self.step_limit),
            threshold: Some(self.threshold),
            floor: Some(self.floor),
            commit: Some(self.commit),
            steps: self.steps,
            reveal: Some(self.reveal),
            lookup: self.lookup,
            cost: self.draft_cost,
            tree: self.tree,
        };
        let name = name.unwrap_or_else(|| DecoderSpec::default_for(cfg).name());
        let spec = DecoderSpec::parse(name, &knobs, cfg)?;
        spec.check_fits(cfg.train.objective)?;
        Ok(spec)
    }
}

/// The `--decoder` values.
pub fn decoder_names() -> PossibleValuesParser {
    PossibleValuesParser::new(DecoderSpec::NAMES)
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    pub checkpoint: PathBuf,
    /// Prompt text; repeat for a batch decoded together. Empty = start from <|endoftext|>.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Read a prompt from a file (repeatable).
    #[arg(long)]
    pub prompt_file: Vec<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// ar, card, verify (CARD's drafts checked by the model: AR's output in fewer passes),
    /// mdlm or bd3lm [default: the checkpoint's own: ar for ARM and CARD, the samplers for
    /// MDLM and BD3LM].
    #[arg(long, value_parser = decoder_names())]
    pub decoder: Option<String>,
    #[command(flatten)]
    pub settings: DecoderArgs,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the continuation contains this text (repeatable); the text is cut before it.
    #[arg(long)]
    pub stop: Vec<String>,
    /// What to do with a prompt that does not fit the context with max_new_tokens.
    #[arg(long, value_enum)]
    pub truncate_prompt: Option<Truncate>,
    /// Print committed text as it is committed (one prompt only).
    #[arg(long)]
    pub stream: bool,
    /// Write a JSONL trace of every decoding step.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Print one JSON object per prompt (the last line is the last prompt's).
    #[arg(long)]
    pub json: bool,
    /// Use the raw weights even when the checkpoint has an EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Expand quantized weights to f32 (the reference) instead of decoding in their blocks.
    #[arg(long)]
    pub f32: bool,
    /// Round the activations of Q4_0/Q4_1/Q8_0 products to 8 bits per 256 values and take
    /// integer dot products (AVX-512 VNNI or AVX2; faster, not bit-equal to the exact
    /// default: `card bench decode --int8` reports its greedy agreement and NLL).
    #[arg(long, conflicts_with = "f32")]
    pub int8: bool,
    /// Each prompt is a user message, rendered with the model's chat template (an imported
    /// model's own; the plain `User: …\nAssistant:` transcript for ours), and the reply stops
    /// at the end of the assistant's turn.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before each user message.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
    };
    sampling.validate()?;
    let device = default_device()?;
    let precision = Precision::from_flags(a.f32, a.int8);
    let ckpt = checkpoint::open_as(&a.checkpoint, &device, !a.no_ema, precision)?;
    let decoder = a.settings.spec(a.decoder.as_deref(), &ckpt.config)?;
    let (tok, model) = (&ckpt.tokenizer, &ckpt.model);
    let (texts, stop) = prompt_texts(&a, &ckpt.extra)?;
    if a.stream && texts.len() > 1 {
        bail!("--stream works with a single prompt");
    }
    let ctx = model.cfg.max_seq_len;
    if a.max_new_tokens >= ctx {
        bail!(
            "--max-new-tokens {} leaves no room for a prompt in the model's context of {ctx}",
            a.max_new_tokens
        );
    }
    let keep_end = a.truncate_prompt == Some(Truncate::Left);
    let prompts = texts
        .iter()
        .map(|t| prompt_tokens(tok, t, a.max_new_tokens, ctx, keep_end))
        .collect::<Result<Vec<_>>>()?;
    let scans = std::cell::RefCell::new(vec![StopScan::default(); prompts.len()]);
    let stop_fn =
        |row: usize, gen: &[u32]| -> bool { scans.borrow_mut()[row].hit(tok, gen, &stop) };
    let opts = GenOptions {
        sampling,
        seed: a.seed,
        stop: if stop.is_empty() {
            None
        } else {
            Some(&stop_fn)
        },
        ..GenOptions::new(a.max_new_tokens, tok)
    };
    let run = Run {
        decoder: &decoder,
        model,
        tok,
        stop: &stop,
    };
    let result = run.generate(&a, &texts[0], &prompts, &opts)?;
    report(&a, decoder.name(), &texts, &prompts, &result, tok, &stop)
}

/// The prompts' text (from `--prompt` and `--prompt-file`, rendered as chat turns with
/// `--chat`) and the stop strings.
fn prompt_texts(
    a: &GenerateArgs,
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<(Vec<String>, Vec<String>)> {
    let mut texts = a.prompt.clone();
    for f in &a.prompt_file {
        texts.push(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read prompt file {}", f.display()))?,
        );
    }
    if texts.is_empty() {
        bail!("give a prompt with --prompt TEXT or --prompt-file FILE (an empty --prompt \"\" starts from <|endoftext|>)");
    }
    // An empty stop string is found in every text: each row would stop after one token.
    if a.stop.iter().any(|s| s.is_empty()) {
        bail!("--stop needs a non-empty string");
    }
    let mut stop = a.stop.clone();
    if a.chat {
        let chat = ChatFormat::for_checkpoint(extra)?;
        for t in texts.iter_mut() {
            let mut messages = Vec::new();
            if let Some(system) = &a.system {
                messages.push(Message {
                    role: Role::System,
                    content: system.clone(),
                });
            }
            messages.push(Message {
                role: Role::User,
                content: std::mem::take(t),
            });
            *t = chat.render(&messages)?;
        }
        stop.extend(chat.stop());
    }
    Ok((texts, stop))
}

/// One decode with what the command asks along the way: the step trace written, row 0's
/// text streamed.
struct Run<'a> {
    decoder: &'a DecoderSpec,
    model: &'a Transformer,
    tok: &'a TextTokenizer,
    stop: &'a [String],
}

impl Run<'_> {
    fn generate(
        &self,
        a: &GenerateArgs,
        first_text: &str,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
    ) -> Result<Generation> {
        let (tok, stop) = (self.tok, self.stop);
        let mut trace_file = match &a.trace {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create trace file {}", p.display()))?,
            )),
            None => None,
        };
        // Row 0's committed text, printed as it becomes final.
        let mut stream = a.stream.then(|| TextStream::new(a.max_new_tokens));
        let print = |text: Option<String>| {
            if let Some(t) = text {
                print!("{t}");
                let _ = std::io::stdout().flush();
            }
        };
        if a.stream {
            print(Some(first_text.to_string()));
        }
        let mut trace_err: Option<anyhow::Error> = None;
        let result =
            self.decoder
                .generate(self.model, prompts, opts, &mut |step: &StepTrace| {
                    if let Some(f) = trace_file.as_mut() {
                        if let Err(e) = step_json(step, tok).and_then(|v| Ok(writeln!(f, "{v}")?)) {
                            trace_err.get_or_insert(e);
                        }
                    }
                    if let Some(s) = stream.as_mut().filter(|_| step.row == 0) {
                        s.commit(&step.committed);
                        print(s.delta(tok, stop));
                    }
                })?;
        if let Some(e) = trace_err {
            return Err(e.context("writing the trace"));
        }
        if let Some(mut f) = trace_file {
            f.flush()?;
        }
        if let Some(s) = stream.as_mut() {
            print(s.finish(tok, &result.rows[0].tokens, stop));
            println!();
        }
        Ok(result)
    }
}

fn report(
    a: &GenerateArgs,
    decoder: &str,
    texts: &[String],
    prompts: &[Vec<u32>],
    g: &Generation,
    tok: &TextTokenizer,
    stop: &[String],
) -> Result<()> {
    for (i, row) in g.rows.iter().enumerate() {
        let decoded = tok.decode(&row.tokens)?;
        let (text, _) = cut_at_stop(&decoded, stop);
        if a.json {
            let obj = serde_json::json!({
                "prompt": texts[i],
                "text": text,
                "tokens": row.tokens.len(),
                "prompt_tokens": prompts[i].len(),
                "forward_passes": row.forward_passes,
                "tokens_per_forward": row.tokens.len() as f64 / row.forward_passes.max(1) as f64,
                "tokens_per_s": row.tokens.len() as f64 / g.elapsed_s.max(1e-9),
                "finish": row.finish,
                "decoder": decoder,
                "elapsed_s": g.elapsed_s,
            });
            println!("{obj}");
        } else if !a.stream {
            println!("{}{}", texts[i], text);
            if g.rows.len() > 1 {
                println!("---");
            }
        }
    }
    eprintln!(
        "{} decoder: {} tokens in {} forward passes ({:.2} tokens/forward), {:.1} tokens/s (prompt excluded)",
        decoder,
        g.generated_tokens(),
        g.forward_passes,
        g.tokens_per_forward(),
        g.tokens_per_s()
    );
    Ok(())
}
