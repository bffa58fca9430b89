//! `card inspect`: look at the noise schedule, a preset's parameter count, a resolved config.

use super::values::choice;
use crate::config::{Config, MaskCount, MaskMode, NoiseConfig, WeightsConfig};
use crate::model::tensor_specs;
use crate::noise::tail_mask;
use crate::objective::context_weights;
use anyhow::{bail, Result};
use rand::SeedableRng;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// The mask of x_t and the per-target weights for one sequence.
    Noise(NoiseArgs),
    /// Build a preset's model and count its parameters.
    Params {
        #[arg(long, default_value = "small")]
        preset: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Print a preset's fully resolved config as TOML.
    Config {
        #[arg(long, default_value = "small")]
        preset: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// A checkpoint's next-token logits at every position of some prompts, as JSON
    /// {"prompts": [..], "ids": [[..]], "logits": [[[..V]..]]} for scripts/check_export.py.
    Logits(LogitsArgs),
}

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    /// Checkpoint (run directory or ckpt-* folder).
    pub checkpoint: std::path::PathBuf,
    /// A prompt (repeatable); tokenized without special tokens.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// Expand quantized blocks to f32 first (the reference of an f32 or f16 export).
    #[arg(long)]
    pub f32: bool,
    /// Write the JSON here instead of standard output.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct NoiseArgs {
    /// Sequence length L.
    #[arg(long, default_value_t = 32)]
    pub len: usize,
    /// Noise level t in [0, 1]: ⌊tL⌋ tokens are masked.
    #[arg(long, default_value_t = 0.5)]
    pub t: f64,
    /// Tail factor λ ≥ 1 (window width ⌈λN⌉).
    #[arg(long = "lambda", default_value_t = NoiseConfig::default().tail_factor)]
    pub tail_factor: f64,
    #[arg(long, value_parser = choice::<MaskMode>(), default_value = "soft")]
    pub mode: MaskMode,
    #[arg(long, value_parser = choice::<MaskCount>(), default_value = "exact")]
    pub count: MaskCount,
    /// Reweighting decay p in (0, 1].
    #[arg(long, default_value_t = WeightsConfig::default().p)]
    pub p: f64,
    /// Reweighting offset β > 0.
    #[arg(long, default_value_t = WeightsConfig::default().beta)]
    pub beta: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON {"mask": [...L], "weights": [...L−1]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    match args.what {
        What::Noise(a) => noise(a),
        What::Params { preset, sets } => {
            let mut cfg = Config::load(&preset, &sets)?;
            // Training sizes the vocabulary from the tokenizer it trains with data.vocab_size
            // (a prepared corpus's tokenizer may differ); counted from shapes, nothing built.
            cfg.model.vocab_size = cfg.data.vocab_size;
            let count: usize = tensor_specs(&cfg.model)
                .iter()
                .map(|s| s.shape.iter().product::<usize>())
                .sum();
            println!(
                "{preset}: {count} parameters ({} layers, d_model {}, {} heads, d_ff {}, vocab {} from data.vocab_size)",
                cfg.model.n_layers,
                cfg.model.d_model,
                cfg.model.n_heads,
                cfg.model.d_ff,
                cfg.model.vocab_size
            );
            Ok(())
        }
        What::Config { preset, sets } => {
            print!("{}", Config::load(&preset, &sets)?.to_toml());
            Ok(())
        }
        What::Logits(a) => logits(a),
    }
}

fn logits(a: LogitsArgs) -> Result<()> {
    use crate::checkpoint::{self, Precision};
    let precision = if a.f32 {
        Precision::F32
    } else {
        Precision::Stored
    };
    let device = crate::runtime::device()?;
    let ckpt = checkpoint::open_as(&a.checkpoint, &device, true, precision)?;
    let (mut ids, mut logits) = (Vec::new(), Vec::new());
    for p in &a.prompts {
        let x = ckpt.tokenizer.encode(p)?;
        if x.is_empty() || x.len() > ckpt.model.cfg.max_seq_len {
            bail!(
                "prompt {p:?} is {} tokens; give 1 to {}",
                x.len(),
                ckpt.model.cfg.max_seq_len
            );
        }
        let input = candle_core::Tensor::from_slice(&x, (1, x.len()), &device)?;
        let out = ckpt
            .model
            .forward(&input, crate::model::Attention::Causal, None)?;
        logits.push(
            out.squeeze(0)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec2::<f32>()?,
        );
        ids.push(x);
    }
    let json =
        serde_json::json!({ "prompts": a.prompts, "ids": ids, "logits": logits }).to_string();
    match &a.out {
        Some(path) => std::fs::write(path, json)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}

fn noise(a: NoiseArgs) -> Result<()> {
    if a.len < 2 {
        bail!("--len must be at least 2");
    }
    if !(0.0..=1.0).contains(&a.t) {
        bail!("--t must be in [0, 1], got {}", a.t);
    }
    // The same checks as a training config.
    let mut cfg = Config::default();
    cfg.noise.tail_factor = a.tail_factor;
    cfg.weights.p = a.p;
    cfg.weights.beta = a.beta;
    cfg.validate()?;
    let mut rng = rand_pcg::Pcg64::seed_from_u64(a.seed);
    let mask = tail_mask(a.len, a.t, a.mode, a.tail_factor, a.count, &mut rng);
    let weights = context_weights(&mask, a.p, a.beta);
    if a.json {
        let m: Vec<u8> = mask.iter().map(|&x| x as u8).collect();
        println!("{}", serde_json::json!({ "mask": m, "weights": weights }));
        return Ok(());
    }
    let row: String = mask.iter().map(|&m| if m { 'M' } else { '.' }).collect();
    println!(
        "x_t      {row}   ({} of {} masked)",
        mask.iter().filter(|&&m| m).count(),
        a.len
    );
    println!("weights of targets 2..L:");
    for (i, w) in weights.iter().enumerate() {
        println!("  target {:>3}  w = {w:.4}", i + 2);
    }
    Ok(())
}
