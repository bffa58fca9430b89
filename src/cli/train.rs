//! `card train`: train a model from a preset, or continue a run exactly.

use super::values::choice;
use crate::checkpoint::{self, Checkpoint, WeightsChoice};
use crate::config::{Config, ObjectiveKind};
use crate::data::load_data;
use crate::data::TextTokenizer;
use crate::dist::Collective;
use crate::runtime::device as default_device;
use crate::train::{RunStart, TrainSummary};
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
    let start = run_start(&args);
    let named = start.load(device)?;
    let cfg = start.config(named.as_ref().map(|c| &c.config), &sets(&args))?;
    let out = out_dir(&args, &start, named.as_ref(), &cfg)?;
    // Before any work: a run another process is writing is refused at once.
    let _lock = if out.exists() && leader {
        Some(checkpoint::lock_run(&out)?)
    } else {
        None
    };
    let begin = start.begin(named, None, device)?;
    let data = load_data(&cfg, begin.tokenizer()?)?;
    if let Some((which, dir)) = begin.weights().filter(|_| leader) {
        let which = match which {
            WeightsChoice::Ema => "EMA",
            WeightsChoice::Raw => "raw",
        };
        eprintln!("starting from the {which} weights of {}", dir.display());
    }
    let mut trainer = begin.trainer(cfg, &data, device)?;
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
    print_summary(&summary, trainer.cfg.train.max_steps);
    side_by_side(&trainer.cfg, &model, &data.tokenizer)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

fn print_summary(summary: &TrainSummary, max_steps: usize) {
    if summary.final_loss.is_nan() {
        // No step ran: the run had already reached max_steps.
        eprintln!(
            "the run is already at step {} of {max_steps}; checkpoint {}",
            summary.steps,
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
}

/// Fresh, from `--init`'s weights, or `--resume`.
fn run_start(args: &TrainArgs) -> RunStart {
    let preset = args.preset.clone();
    match (&args.resume, &args.init) {
        (Some(dir), _) => RunStart::Resume {
            dir: dir.clone(),
            preset,
        },
        (None, Some(from)) => RunStart::Init {
            from: from.clone(),
            preset,
            ema: !args.no_ema,
        },
        (None, None) => RunStart::Fresh {
            preset: preset.unwrap_or_else(|| "small".into()),
        },
    }
}

/// `--set`, then the flags that override config fields.
fn sets(args: &TrainArgs) -> Vec<String> {
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
    sets
}

/// `--out`, else the resumed run's directory, `runs/<run>-init-<objective>` for a run from
/// a checkpoint's weights (named after the run it starts from) or `runs/<preset>-<objective>`.
/// Only `--resume` continues a directory that already holds a run.
fn out_dir(
    args: &TrainArgs,
    start: &RunStart,
    named: Option<&Checkpoint>,
    cfg: &Config,
) -> Result<PathBuf> {
    let objective = cfg.train.objective.name();
    let out = match (args.out.clone(), start) {
        (Some(out), _) => out,
        (None, RunStart::Resume { dir, .. }) => dir.clone(),
        (None, RunStart::Fresh { preset }) => PathBuf::from(format!("runs/{preset}-{objective}")),
        (None, RunStart::Init { from, .. }) => {
            let ckpt = named.map_or(from.as_path(), |c| c.dir.as_path());
            let run = ckpt.parent().unwrap_or(ckpt);
            let name = run
                .file_name()
                .map_or("run".into(), |n| n.to_string_lossy());
            PathBuf::from(format!("runs/{name}-init-{objective}"))
        }
    };
    if !matches!(start, RunStart::Resume { .. }) && out.join("latest").exists() {
        bail!(
            "{} already holds a run; continue it with --resume {0} or choose another --out",
            out.display()
        );
    }
    Ok(out)
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
    let mut prompt = tok.encode_prompt(prompt_text)?;
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
        let label = d.to_string();
        let same = match (&d, &ar_text) {
            (DecoderSpec::Ar, _) => String::new(),
            (_, Some(a)) if *a == text => " (AR's text)".into(),
            (_, Some(_)) => " (differs from AR)".into(),
            _ => String::new(),
        };
        eprintln!(
            "  {label:<20} {:.2} tokens/forward{same}: {}",
            g.tokens_per_forward(),
            text.replace('\n', " ")
        );
        if matches!(d, DecoderSpec::Ar) {
            ar_text = Some(text);
        }
    }
    Ok(())
}
