//! `card generate`: decode from a checkpoint with AR or CARD dynamic parallel decoding (or
//! the MDLM / BD3LM samplers for those baselines), printing statistics, optionally streaming committed text and writing a per-step trace.

use crate::checkpoint;
use crate::config::ObjectiveKind;
use crate::data::TextTokenizer;
use crate::decode::{
    ArDecoder, Bd3lmDecoder, CardDecoder, CommitMode, Decoder, Floor, GenOptions, Generation,
    MdlmDecoder, Reveal, Sampling, StepTrace,
};
use crate::runtime::device as default_device;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecoderKind {
    Ar,
    Card,
    /// MDLM ancestral denoising of a fixed-length canvas (MDLM checkpoints).
    Mdlm,
    /// BD3LM block-by-block denoising with a KV cache (BD3LM checkpoints).
    Bd3lm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Truncate {
    /// Keep the end of an over-long prompt.
    Left,
}

/// CARD decoding knobs, shared by `generate` and `eval --generation`.
#[derive(clap::Args, Debug, Clone)]
pub struct CardArgs {
    /// CARD: K, slots decoded in parallel.
    #[arg(long, default_value_t = CardDecoder::default().block_size)]
    pub block_size: usize,
    /// CARD: T_max, passes after which a block's remaining slots are filled.
    #[arg(long, default_value_t = CardDecoder::default().step_limit)]
    pub step_limit: usize,
    /// CARD (and BD3LM --reveal confidence): τ in [0, 1], commit slots at least this confident.
    #[arg(long, default_value_t = CardDecoder::default().threshold)]
    pub threshold: f64,
    #[arg(long, value_enum, default_value = "leftmost")]
    pub floor: Floor,
    #[arg(long, value_enum, default_value = "block")]
    pub commit: CommitMode,
}

impl CardArgs {
    /// The validated decoder (τ must lie in [0, 1] on the command line).
    pub fn decoder(&self) -> Result<CardDecoder> {
        if !(0.0..=1.0).contains(&self.threshold) {
            bail!("--threshold τ must be in [0, 1], got {}", self.threshold);
        }
        let card = CardDecoder {
            block_size: self.block_size,
            step_limit: self.step_limit,
            threshold: self.threshold,
            floor: self.floor,
            commit: self.commit,
        };
        card.validate()?;
        Ok(card)
    }
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
    #[arg(long, value_enum, default_value = "ar")]
    pub decoder: DecoderKind,
    #[command(flatten)]
    pub card: CardArgs,
    /// MDLM: denoising steps over the canvas; BD3LM: steps per block (its block size is the
    /// checkpoint's) [default: MDLM one per new token, BD3LM one per block slot].
    #[arg(long)]
    pub steps: Option<usize>,
    /// BD3LM: reveal slots ancestrally or by confidence (≥ --threshold).
    #[arg(long, value_enum, default_value = "ancestral")]
    pub reveal: Reveal,
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
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
    };
    sampling.validate()?;
    let card = a.card.decoder()?;
    if a.steps == Some(0) {
        bail!("--steps must be at least 1");
    }
    let device = default_device()?;
    let ckpt = checkpoint::open(&a.checkpoint, &device, !a.no_ema)?;
    let decoder: Box<dyn Decoder> = match a.decoder {
        DecoderKind::Ar => Box::new(ArDecoder),
        DecoderKind::Card => Box::new(card),
        DecoderKind::Mdlm => Box::new(MdlmDecoder {
            steps: a.steps.unwrap_or(0),
        }),
        DecoderKind::Bd3lm => Box::new(Bd3lmDecoder {
            block_size: ckpt.config.bd3lm.block_size,
            steps: a.steps.unwrap_or(0),
            reveal: a.reveal,
            threshold: card.threshold,
        }),
    };
    let objective = ckpt.state.objective;
    if !decoder.fits(objective) {
        bail!(
            "a {} checkpoint cannot be decoded with --decoder {}; decoders that fit: {}",
            objective.name(),
            decoder.name(),
            fitting_decoders(objective).join(", ")
        );
    }
    let (tok, model) = (&ckpt.tokenizer, &ckpt.model);
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
    let mut prompts = Vec::new();
    for t in &texts {
        let mut ids = tok.encode(t)?;
        if ids.is_empty() {
            ids.push(tok.eot_id());
        }
        if ids.len() + a.max_new_tokens > ctx {
            if a.truncate_prompt == Some(Truncate::Left) {
                ids.drain(..ids.len() + a.max_new_tokens - ctx);
            } else {
                bail!(
                    "the prompt has {} tokens; with --max-new-tokens {} that exceeds the model's context of {ctx} (shorten it, or pass --truncate-prompt left)",
                    ids.len(),
                    a.max_new_tokens
                );
            }
        }
        prompts.push(ids);
    }
    let stops = a.stop.clone();
    let stop_tok = tok.clone();
    let stop_fn = move |_row: usize, gen: &[u32]| -> bool {
        let text = stop_tok.decode(gen).unwrap_or_default();
        stops.iter().any(|s| text.contains(s.as_str()))
    };
    let opts = GenOptions {
        max_new_tokens: a.max_new_tokens,
        eos_id: tok.eot_id(),
        mask_id: tok.mask_id(),
        sampling,
        seed: a.seed,
        stop: if a.stop.is_empty() {
            None
        } else {
            Some(&stop_fn)
        },
    };
    let mut trace_file = match &a.trace {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot create trace file {}", p.display()))?,
        )),
        None => None,
    };
    let mut streamer = Streamer::new(tok, a.stream);
    if a.stream {
        print!("{}", texts[0]);
        std::io::stdout().flush()?;
    }
    let mut trace_err: Option<anyhow::Error> = None;
    let result = decoder.generate(model, &prompts, &opts, &mut |step: &StepTrace| {
        if let Some(f) = trace_file.as_mut() {
            if let Err(e) = write_trace(f, step, tok) {
                trace_err.get_or_insert(e);
            }
        }
        streamer.on_step(step);
    })?;
    if let Some(e) = trace_err {
        return Err(e.context("writing the trace"));
    }
    if let Some(mut f) = trace_file {
        f.flush()?;
    }
    streamer.finish(&result);
    report(&a, &texts, &prompts, &result, tok)
}

fn fitting_decoders(objective: ObjectiveKind) -> Vec<&'static str> {
    let all: [Box<dyn Decoder>; 4] = [
        Box::new(ArDecoder),
        Box::new(CardDecoder::default()),
        Box::new(MdlmDecoder::default()),
        Box::new(Bd3lmDecoder::default()),
    ];
    all.iter()
        .filter(|d| d.fits(objective))
        .map(|d| d.name())
        .collect()
}

fn write_trace(f: &mut impl Write, step: &StepTrace, tok: &TextTokenizer) -> Result<()> {
    let mut v = serde_json::to_value(step)?;
    for key in ["slots", "committed"] {
        if let Some(arr) = v[key].as_array_mut() {
            for s in arr {
                let id = s["token"].as_u64().unwrap_or(0) as u32;
                s["text"] = serde_json::Value::String(tok.decode(&[id]).unwrap_or_default());
            }
        }
    }
    writeln!(f, "{v}")?;
    Ok(())
}

/// Prints the left-contiguous committed text of row 0 as it grows.
struct Streamer<'a> {
    tok: &'a TextTokenizer,
    on: bool,
    tokens: Vec<Option<u32>>,
    printed: String,
}

impl<'a> Streamer<'a> {
    fn new(tok: &'a TextTokenizer, on: bool) -> Self {
        Self {
            tok,
            on,
            tokens: Vec::new(),
            printed: String::new(),
        }
    }

    fn on_step(&mut self, step: &StepTrace) {
        if !self.on || step.row != 0 {
            return;
        }
        for c in &step.committed {
            if self.tokens.len() <= c.pos {
                self.tokens.resize(c.pos + 1, None);
            }
            self.tokens[c.pos] = Some(c.token);
        }
        let prefix: Vec<u32> = self
            .tokens
            .iter()
            .map_while(|t| *t)
            .filter(|&t| t != self.tok.eot_id())
            .collect();
        self.emit(&prefix);
    }

    fn emit(&mut self, tokens: &[u32]) {
        let text = self.tok.decode(tokens).unwrap_or_default();
        // Hold back a trailing partial UTF-8 sequence (shown as U+FFFD) until it completes.
        let text = text.trim_end_matches('\u{FFFD}');
        if let Some(new) = text.strip_prefix(self.printed.as_str()) {
            print!("{new}");
            let _ = std::io::stdout().flush();
            self.printed = text.to_string();
        }
    }

    fn finish(&mut self, result: &Generation) {
        if self.on {
            self.emit(&result.rows[0].tokens);
            println!();
        }
    }
}

fn cut_at_stop(text: &str, stops: &[String]) -> String {
    let cut = stops
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    text[..cut].to_string()
}

fn report(
    a: &GenerateArgs,
    texts: &[String],
    prompts: &[Vec<u32>],
    g: &Generation,
    tok: &TextTokenizer,
) -> Result<()> {
    for (i, row) in g.rows.iter().enumerate() {
        let text = cut_at_stop(&tok.decode(&row.tokens)?, &a.stop);
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
                "decoder": a.decoder_name(),
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
        a.decoder_name(),
        g.generated_tokens(),
        g.forward_passes,
        g.tokens_per_forward(),
        g.tokens_per_s()
    );
    Ok(())
}

impl GenerateArgs {
    fn decoder_name(&self) -> &'static str {
        match self.decoder {
            DecoderKind::Ar => "ar",
            DecoderKind::Card => "card",
            DecoderKind::Mdlm => "mdlm",
            DecoderKind::Bd3lm => "bd3lm",
        }
    }
}
