//! `card train`: train a model from a preset, or continue a run exactly.

use super::values::choice;
use crate::checkpoint;
use crate::config::{Config, ObjectiveKind};
use crate::data::load_data;
use crate::data::TextTokenizer;
use crate::dist::Collective;
use crate::runtime::device as default_device;
use crate::train::Trainer;
use anyhow::{bail, Result};
use candle_core::Device;
use std::path::PathBuf;
use std::rc::Rc;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Preset name (tiny, small, base, bench-5m, paper-110m, paper-1b) or a .toml file
    /// [default: small; with --resume, the run's saved config].
    #[arg(long)]
    pub preset: Option<String>,
    /// Training objective (overrides train.objective).
    #[arg(long, value_parser = choice::<ObjectiveKind>())]
    pub objective: Option<ObjectiveKind>,
    /// Run directory for checkpoints and metrics.jsonl [default: runs/<preset>-<objective>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prepared data directory from `card data prepare` [default: embedded corpus].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Stop after this many optimizer steps (overrides train.max_steps).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Continue the run in this directory exactly where its last checkpoint left off.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start a fresh run (step 0, new optimizer and schedule) from this checkpoint's weights
    /// (its EMA weights where it kept them, unless --no-ema), model shape and tokenizer; the
    /// rest of the config is the checkpoint's unless --preset is given, then the fine-tuning
    /// defaults (train.lr=3e-4, train.warmup_steps=50) and --set on top.
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// With --init: start from the raw weights even where the checkpoint kept an EMA.
    #[arg(long, requires = "init")]
    pub no_ema: bool,
    /// Override any config field, e.g. --set train.lr=1e-3 --set noise.tail_factor=2.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    // Under `mpirun` every rank runs this; an error on one ends the whole job.
    let device = default_device()?;
    let comm = crate::dist::init(&device)?;
    crate::dist::or_abort(comm.as_ref(), || train(args, &device, comm.clone()))
}

fn train(args: TrainArgs, device: &Device, comm: Rc<dyn Collective>) -> Result<()> {
    let leader = comm.rank() == 0;
    let mut sets = args.sets.clone();
    if let Some(o) = args.objective {
        sets.push(format!("train.objective=\"{}\"", o.name()));
    }
    if let Some(n) = args.max_steps {
        sets.push(format!("train.max_steps={n}"));
    }
    if let Some(d) = &args.data {
        sets.push(format!("data.path={:?}", d.display().to_string()));
    }
    let device = device.clone();
    let init = match &args.init {
        Some(dir) => Some(checkpoint::load(dir, &device)?),
        None => None,
    };
    let (cfg, ckpt, out) = match &args.resume {
        Some(dir) => {
            let ckpt = checkpoint::load(dir, &device)?;
            // The saved config, unless a preset is named, with the overrides applied on top.
            let cfg = match &args.preset {
                Some(p) => Config::load(p, &sets)?,
                None => Config::from_toml_with_sets(&ckpt.config.to_toml(), &sets)?,
            };
            let out = args.out.clone().unwrap_or_else(|| dir.clone());
            (cfg, Some(ckpt), out)
        }
        None => {
            let preset = args.preset.as_deref().unwrap_or("small");
            // From a checkpoint's weights: the fine-tuning defaults first, the user's on top.
            let sets: Vec<String> = match &init {
                Some(_) => crate::train::FINE_TUNE_SETS
                    .iter()
                    .map(|s| s.to_string())
                    .chain(sets.iter().cloned())
                    .collect(),
                None => sets.clone(),
            };
            let cfg = match (&init, &args.preset) {
                (Some(c), None) => Config::from_toml_with_sets(&c.config.to_toml(), &sets)?,
                _ => Config::load(preset, &sets)?,
            };
            let out = args.out.clone().unwrap_or_else(|| {
                let objective = cfg.train.objective.name();
                match &init {
                    // A fine-tuning run is named after the run it starts from.
                    Some(c) => {
                        let run = c.dir.parent().unwrap_or(&c.dir);
                        let name = run
                            .file_name()
                            .map_or("run".into(), |n| n.to_string_lossy());
                        PathBuf::from(format!("runs/{name}-init-{objective}"))
                    }
                    None => PathBuf::from(format!("runs/{preset}-{objective}")),
                }
            });
            if out.join("latest").exists() {
                bail!(
                    "{} already holds a run; continue it with --resume {0} or choose another --out",
                    out.display()
                );
            }
            (cfg, None, out)
        }
    };
    // Before any work: a run another process is writing is refused at once.
    let _lock = if out.exists() && leader {
        Some(checkpoint::lock_run(&out)?)
    } else {
        None
    };
    let tokenizer = match ckpt.as_ref().or(init.as_ref()) {
        Some(c) => Some(TextTokenizer::from_json(&c.tokenizer_json)?),
        None => None,
    };
    let data = load_data(&cfg, tokenizer)?;
    let mut trainer = match (ckpt, &init) {
        (Some(c), _) => Trainer::resume(cfg, c, &data)?,
        (None, Some(i)) => {
            let (weights, which) = match (&i.ema, args.no_ema) {
                (Some(ema), false) => (ema, "EMA"),
                _ => (&i.weights, "raw"),
            };
            if leader {
                eprintln!("starting from the {which} weights of {}", i.dir.display());
            }
            Trainer::from_checkpoint(cfg, i, weights, &data)?
        }
        (None, None) => Trainer::new(cfg, &data, &device)?,
    };
    let world = comm.world();
    if world > 1 {
        trainer = trainer.distributed(comm.clone())?;
        if leader {
            eprintln!(
                "data-parallel over {}: {world} ranks, each {} of every {} sequences, {} compute threads per rank",
                comm.describe(),
                trainer.cfg.train.batch_size / world,
                trainer.cfg.train.batch_size,
                crate::runtime::threads()
            );
        }
    }
    if !leader {
        trainer.run(&out, false)?;
        return Ok(());
    }
    let c = &trainer.cfg;
    eprintln!(
        "training {} parameters, {} objective, on {} train / {} val tokens: {} steps of {} tokens -> {}",
        trainer.params.count(),
        c.train.objective.name(),
        data.train.len(),
        data.val.len(),
        c.train.max_steps,
        c.tokens_per_step(),
        out.display()
    );
    if trainer.state.step > 0 {
        eprintln!("resuming at step {}", trainer.state.step);
    }
    let summary = trainer.run(&out, !args.quiet)?;
    let model = trainer.eval_model()?;
    if summary.final_loss.is_nan() {
        // No step ran: the run had already reached max_steps.
        eprintln!(
            "the run is already at step {} of {}; checkpoint {}",
            summary.steps,
            trainer.cfg.train.max_steps,
            summary.checkpoint.display()
        );
    } else {
        eprintln!(
            "step {}: train loss {:.4}, val loss {} ({:.0} tok/s); checkpoint {}",
            summary.steps,
            summary.final_loss,
            summary.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            summary.tokens_per_s,
            summary.checkpoint.display()
        );
    }
    side_by_side(&trainer.cfg, &model, &data.tokenizer)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// Greedy continuations of one prompt by the decoders that fit the objective, side by side
/// with tokens per forward pass: for CARD, AR, the lossless verifier (AR's text in fewer
/// passes) and threshold decoding.
fn side_by_side(
    cfg: &Config,
    model: &crate::model::Transformer,
    tok: &TextTokenizer,
) -> Result<()> {
    use crate::decode::{CardDecoder, Decoder, DecoderSpec, GenOptions, VerifyDecoder};
    let prompt_text = "Alice was beginning to get very tired of sitting by her sister";
    let mut prompt = tok.encode(prompt_text)?;
    let ctx = model.cfg.max_seq_len;
    prompt.truncate(ctx / 2);
    let max_new = 48.min(ctx - prompt.len());
    let decoders = match cfg.train.objective {
        crate::config::ObjectiveKind::Card => vec![
            DecoderSpec::Ar,
            DecoderSpec::Verify(VerifyDecoder::default()),
            DecoderSpec::Card(CardDecoder {
                block_size: 4,
                step_limit: 4,
                threshold: 0.5,
                ..CardDecoder::default()
            }),
        ],
        _ => vec![DecoderSpec::default_for(cfg)],
    };
    eprintln!("greedy continuations of \"{}\":", tok.decode(&prompt)?);
    let mut ar_text = None;
    for d in decoders {
        let opts = GenOptions::new(max_new, tok);
        let g = d.generate(model, std::slice::from_ref(&prompt), &opts, &mut |_| {})?;
        let text = tok.decode(&g.rows[0].tokens)?;
        let label = match &d {
            DecoderSpec::Card(c) => format!("card K={} τ={}", c.block_size, c.threshold),
            DecoderSpec::Verify(v) => format!("verify K={}", v.block_size),
            other => other.name().to_string(),
        };
        let same = match (&d, &ar_text) {
            (DecoderSpec::Ar, _) => String::new(),
            (_, Some(a)) if *a == text => " (AR's text)".into(),
            (_, Some(_)) => " (differs from AR)".into(),
            _ => String::new(),
        };
        eprintln!(
            "  {label:<16} {:.2} tokens/forward{same}: {}",
            g.tokens_per_forward(),
            text.replace('\n', " ")
        );
        if matches!(d, DecoderSpec::Ar) {
            ar_text = Some(text);
        }
    }
    Ok(())
}
