//! `card bench`: throughput benchmarks that print ratios against a baseline run in the same process.

use crate::bench::train::{DistReport, TrainReport};
use crate::bench::{bench_train, DecodePlan, DistBench, Lengths, StartFrom};
use crate::checkpoint::Precision;
use crate::config::{Choice, ComputeDtype, Config, ObjectiveKind};
use crate::data::{load_data, Prepared};
use crate::decode::{CardDecoder, DecoderSpec, VerifyDecoder};
use crate::runtime::device as default_device;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::io::IsTerminal;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// Training step time, tokens/s, peak memory and MFU of objectives side by side.
    Train(TrainBenchArgs),
    /// AR vs CARD decoding speed and quality proxies on a fixed prompt set (a quantized
    /// model beside its f32 reference).
    Decode(DecodeBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct DecodeBenchArgs {
    /// A run directory or checkpoint directory (a CARD checkpoint).
    pub checkpoint: std::path::PathBuf,
    /// Generation lengths; a length that does not fit the context after a set's longest
    /// prompt is skipped [default: 128, or what the context leaves].
    #[arg(long, value_delimiter = ',')]
    pub lengths: Vec<usize>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// CARD threshold settings as K:T_max:τ, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8:8:0.9,8:8:0.7")]
    pub grid: Vec<String>,
    /// Lossless verifier settings, comma-separated ("" for none): K ([MASK] slots per pass)
    /// or K:L (and up to L prompt-lookup drafts; 0:L is lookup alone, for ARM models too)
    /// or K:L:COST (the budget's cost of a position fixed; 0 sends every draft and slot;
    /// empty or absent: fitted to the passes' timings) or K:L:COST:TREE (up to TREE
    /// alternative positions beside the main chain, as a draft tree; e.g. 0:8::4).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub verify: Vec<String>,
    /// Prompt sets: prose (held-out prefixes of the checkpoint's corpus), probes (counting,
    /// lists, copying), copying (the probes that copy a passage of the prompt), own (prose prefixes + the model's own greedy continuation), builtin
    /// [default: prose,probes; builtin instead of prose when the corpus is not available].
    #[arg(long, value_delimiter = ',')]
    pub sets: Vec<String>,
    /// Score the generated text with this checkpoint instead of the model itself.
    #[arg(long)]
    pub judge: Option<std::path::PathBuf>,
    /// Timed rounds per setting (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print `{"rows": [...], "precision": ...}` as JSON on the last line.
    #[arg(long)]
    pub json: bool,
    /// Use the raw weights even when the checkpoint has an EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Also decode with the weight matrices rounded to bf16 (half the bytes per token; norms
    /// stay f32), beside the f32 model: tokens/s, share of copy bandwidth, greedy agreement.
    #[arg(long)]
    pub bf16: bool,
    /// Decode the quantized blocks with activations rounded to 8 bits (integer dot
    /// products), beside the f32 reference: speed, greedy agreement and NLL.
    #[arg(long, conflicts_with = "bf16")]
    pub int8: bool,
    /// Instead of decoding: time one cached pass of n positions per row after `--context`
    /// tokens, for each n of `--positions`, each `--batch` and each weight format the
    /// checkpoint offers (its stored blocks, exact and int8, f32, bf16), with the ratio to n = 1; `--json`
    /// prints `{"cost_curve": [{precision, batch, positions, ms, ratio}]}`.
    #[arg(long)]
    pub cost_curve: bool,
    /// Cost curve: positions per row in one pass.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,6,8,12,16")]
    pub positions: Vec<usize>,
    /// Cost curve: tokens cached per row before the pass.
    #[arg(long, default_value_t = 64)]
    pub context: usize,
    /// Cost curve: timed passes per point (the median is reported).
    #[arg(long, default_value_t = 30)]
    pub reps: usize,
}

#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Train from this checkpoint's weights (its EMA where kept), model shape and tokenizer
    /// instead of a preset's random init, on the embedded corpus (e.g. the imported SmolLM2:
    /// `--from data/models/smollm2/run --set train.batch_size=4`). The config is the
    /// checkpoint's under the fine-tuning defaults, then `--set`.
    #[arg(long, conflicts_with = "distributed")]
    pub from: Option<std::path::PathBuf>,
    /// Comma-separated objectives, or `all`.
    #[arg(long, default_value = "arm,card")]
    pub objective: String,
    /// Timed steps per objective (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps per objective.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// What the linear layers compute in, comma-separated: f32, bf16 (bf16 operands, f32
    /// sums; `train.compute`), auto (whichever this CPU's products run faster, measured).
    /// Each objective runs once per entry, interleaved [default: the config's train.compute].
    #[arg(long, value_delimiter = ',', value_name = "DTYPES")]
    pub compute: Vec<String>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print JSON as the last line: one object for one objective, else a list.
    #[arg(long)]
    pub json: bool,
    /// Internal: run one objective's warm-up and 2 × steps steps in this process and print its
    /// memory as JSON (peak, and resident growth over the last `steps` steps).
    #[arg(long, hide = true)]
    pub memory_probe: bool,
    /// Data-parallel throughput instead: the same global batch on each of these rank counts
    /// (e.g. 1,2), each launched with `--mpirun`; prints step time, communication time per
    /// step, tokens/s per rank and scaling efficiency against the first count. Needs a binary
    /// built with `--features mpi`.
    #[arg(long, value_delimiter = ',', value_name = "RANKS")]
    pub distributed: Vec<usize>,
    /// The MPI launcher `--distributed` runs (extra arguments after it, e.g.
    /// "mpirun --hostfile hosts").
    #[arg(long, default_value = "mpirun")]
    pub mpirun: String,
    /// Internal: this process is one rank of a `--distributed` measurement.
    #[arg(long, hide = true)]
    pub rank_bench: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Train(a) => train(a),
        BenchWhat::Decode(a) => decode(a),
    }
}

fn parse_objectives(s: &str) -> Result<Vec<ObjectiveKind>> {
    if s == "all" {
        return Ok(ObjectiveKind::ALL.iter().map(|c| c.0).collect());
    }
    s.split(',')
        .map(|o| {
            ObjectiveKind::from_name(&o.trim().to_lowercase()).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown objective '{o}' (known: {}, all)",
                    ObjectiveKind::names().join(", ")
                )
            })
        })
        .collect()
}

/// The benchmark's config: the preset's, or with `--from` the checkpoint's under the
/// fine-tuning defaults, reading the embedded corpus; `--set` on top of either.
fn bench_config(a: &TrainBenchArgs) -> Result<Config> {
    let Some(from) = &a.from else {
        return Config::load(&a.preset, &a.sets);
    };
    let mut sets = vec!["data.path=\"\"".to_string()];
    sets.extend(a.sets.iter().cloned());
    let start = crate::train::RunStart::Init {
        from: from.clone(),
        preset: None,
        ema: true,
    };
    start.config(None, &sets)
}

/// `--compute`: the config's own compute type when none is given.
fn parse_computes(given: &[String], config: ComputeDtype) -> Result<Vec<ComputeDtype>> {
    if given.is_empty() {
        return Ok(vec![config]);
    }
    given
        .iter()
        .map(|c| match c.trim() {
            "f32" => Ok(ComputeDtype::F32),
            "bf16" => Ok(ComputeDtype::Bf16),
            "auto" => Ok(ComputeDtype::Auto),
            other => bail!("--compute: unknown '{other}' (known: f32, bf16, auto)"),
        })
        .collect()
}

/// Progress on one rewritten stderr line, when stderr is a terminal.
fn progress_line(tty: bool) -> impl Fn(&str) {
    move |m: &str| {
        if tty {
            eprint!("\r\x1b[2K{m}")
        }
    }
}

fn train(a: TrainBenchArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let objectives = parse_objectives(&a.objective)?;
    let cfg = bench_config(&a)?;
    let computes = parse_computes(&a.compute, cfg.train.compute)?;
    if !a.distributed.is_empty() {
        return distributed(&a, &objectives);
    }
    let device = default_device()?;
    if !a.rank_bench && !a.memory_probe {
        if let Some(w) = crate::bench::busy_warning() {
            eprintln!("{w}");
        }
        eprintln!("preparing data (embedded corpus unless data.path is set)");
    }
    let from = match &a.from {
        Some(p) => Some(StartFrom::open(p, &device)?),
        None => None,
    };
    let data = load_data(&cfg, from.as_ref().map(|f| f.tokenizer()).transpose()?)?;
    if a.rank_bench {
        return rank_bench(&a, &cfg, &data, &objectives, &device);
    }
    let from = from.as_ref();
    if a.memory_probe {
        let probe = crate::bench::memory_probe(
            &cfg,
            &data,
            from,
            objectives[0],
            a.warmup,
            a.steps,
            &device,
        )?;
        println!("{}", serde_json::to_string(&probe)?);
        return Ok(());
    }
    let tty = std::io::stderr().is_terminal();
    let variants: Vec<(ObjectiveKind, ComputeDtype)> = objectives
        .iter()
        .flat_map(|&o| computes.iter().map(move |&c| (o, c)))
        .collect();
    let progress = progress_line(tty);
    let mut results = bench_train(
        &cfg, &data, from, &variants, a.warmup, a.steps, &device, &progress,
    )?;
    // Each objective's memory, measured in a process of its own.
    for r in &mut results {
        progress(&format!(
            "{}: memory over {} steps in a process of its own",
            r.objective, a.steps
        ));
        if let Some(p) = probe_memory(&a, &r.objective, &r.compute) {
            r.peak_rss_mb = p.peak_rss_mb;
            r.rss_growth_mb = Some(p.rss_growth_mb);
        }
    }
    progress("");
    let source = a.from.as_ref().map_or(format!("preset {}", a.preset), |p| {
        format!("from {}", p.display())
    });
    let report = TrainReport {
        source: &source,
        cfg: &cfg,
        results: &results,
        cpu: device.is_cpu(),
    };
    println!("{report}");
    if a.json {
        if results.len() == 1 {
            println!("{}", serde_json::to_string(&results[0])?);
        } else {
            println!("{}", serde_json::to_string(&results)?);
        }
    }
    Ok(())
}

/// `--rank-bench`: this process is one rank of a `--distributed` measurement; rank 0 prints
/// each objective's figures as a JSON line.
fn rank_bench(
    a: &TrainBenchArgs,
    cfg: &Config,
    data: &Prepared,
    objectives: &[ObjectiveKind],
    device: &Device,
) -> Result<()> {
    let comm = crate::dist::init(device)?;
    let leader = comm.rank() == 0;
    crate::dist::or_abort(comm.clone().as_ref(), || {
        for &o in objectives {
            let r = crate::bench::bench_distributed(
                cfg,
                data,
                o,
                a.warmup,
                a.steps,
                comm.clone(),
                device,
            )?;
            if leader {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Ok(())
    })
}

fn parse_decoders(grid: &[String], verify: &[String]) -> Result<Vec<DecoderSpec>> {
    let mut out = Vec::new();
    for g in grid.iter().filter(|g| !g.is_empty()) {
        out.push(DecoderSpec::Card(
            CardDecoder::from_setting(g).context("--grid")?,
        ));
    }
    for k in verify.iter().filter(|k| !k.is_empty()) {
        let bad = || {
            anyhow::anyhow!(
                "--verify: '{k}' is not K, K:L, K:L:COST or K:L:COST:TREE (mask slots, lookup \
                 drafts, position cost or empty for measured, tree positions)"
            )
        };
        let parts: Vec<&str> = k.trim().split(':').collect();
        if parts.len() > 4 {
            return Err(bad());
        }
        let field = |i: usize| parts.get(i).copied().unwrap_or("0");
        let v = VerifyDecoder {
            block_size: field(0).parse().map_err(|_| bad())?,
            lookup: field(1).parse().map_err(|_| bad())?,
            cost: match parts.get(2) {
                Some(c) if !c.is_empty() => Some(c.parse().map_err(|_| bad())?),
                _ => None,
            },
            tree: field(3).parse().map_err(|_| bad())?,
        };
        v.validate().context("--verify")?;
        out.push(DecoderSpec::Verify(v));
    }
    Ok(out)
}

fn decode(a: DecodeBenchArgs) -> Result<()> {
    if a.cost_curve {
        return cost_curve(a);
    }
    let decoders = parse_decoders(&a.grid, &a.verify)?;
    if a.batch.contains(&0) || a.lengths.contains(&0) {
        bail!("--batch and --lengths must be positive");
    }
    let fit = a.lengths.is_empty();
    let plan = DecodePlan {
        checkpoint: a.checkpoint.clone(),
        use_ema: !a.no_ema,
        precision: Precision::from_flags(false, a.int8),
        beside_f32: true,
        bf16: a.bf16,
        judge: a.judge.clone(),
        sets: a.sets.clone(),
        lengths: Lengths {
            tokens: if fit { vec![128] } else { a.lengths.clone() },
            at_most_half_context: false,
            fit,
        },
        batches: a.batch.clone(),
        decoders,
        rounds: a.rounds,
    };
    let ready = plan.open()?.prepare()?;
    // Every input is checked: measuring starts here.
    if let Some(w) = crate::bench::busy_warning() {
        eprintln!("{w}");
    }
    let progress = progress_line(std::io::stderr().is_terminal());
    let report = ready.measure(&progress)?;
    progress("");
    println!("{report}");
    if a.json {
        println!("{}", report.json());
    }
    Ok(())
}

/// `--cost-curve`: what a pass of n positions costs, per weight format and batch size.
fn cost_curve(a: DecodeBenchArgs) -> Result<()> {
    let device = crate::runtime::device()?;
    let ckpt = crate::checkpoint::open(&a.checkpoint, &device, !a.no_ema)?;
    if !ckpt.objective().is_causal() {
        bail!("the cost curve times cached causal passes: an ARM or CARD checkpoint");
    }
    let plan = crate::bench::CostPlan {
        batches: a.batch.clone(),
        positions: a.positions.clone(),
        context: a.context,
        reps: a.reps,
    };
    plan.check(&ckpt.model)?;
    let formats = crate::bench::cost_curve::formats(&ckpt)?;
    if let Some(w) = crate::bench::busy_warning() {
        eprintln!("{w}");
    }
    let progress = progress_line(std::io::stderr().is_terminal());
    let curve = crate::bench::cost_curve::measure(&formats, &plan, &progress)?;
    progress("");
    print!("{curve}");
    if a.json {
        println!("{}", curve.json());
    }
    Ok(())
}

/// Memory of a child `card` running one objective's warm-up and timed steps, or None if it
/// fails.
fn probe_memory(
    a: &TrainBenchArgs,
    objective: &str,
    compute: &str,
) -> Option<crate::bench::MemoryProbe> {
    let exe = std::env::current_exe().ok()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "bench",
        "train",
        "--memory-probe",
        "--preset",
        &a.preset,
        "--objective",
        objective,
    ]);
    if let Some(from) = &a.from {
        cmd.arg("--from").arg(from);
    }
    cmd.args(["--warmup", &a.warmup.to_string()]);
    cmd.args(["--steps", &a.steps.to_string()]);
    for s in &a.sets {
        cmd.args(["--set", s]);
    }
    cmd.args(["--set", &format!("train.compute=\"{compute}\"")]);
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status
        .success()
        .then(|| serde_json::from_str(text.lines().last()?).ok())
        .flatten()
}

/// `--distributed`: each rank count in a job of its own under the launcher, one after the
/// other, then the table with ratios against the first count.
fn distributed(a: &TrainBenchArgs, objectives: &[ObjectiveKind]) -> Result<()> {
    if !cfg!(feature = "mpi") {
        bail!("--distributed needs a binary built with MPI: cargo build --release --features mpi");
    }
    if a.distributed.contains(&0) {
        bail!("--distributed: rank counts must be at least 1");
    }
    let exe = std::env::current_exe()?;
    let mut launcher = a.mpirun.split_whitespace();
    let program = launcher.next().context("--mpirun is empty")?;
    let extra: Vec<&str> = launcher.collect();
    let mut rows: Vec<DistBench> = Vec::new();
    for &n in &a.distributed {
        eprintln!("bench train: {n} rank(s) under {program}");
        rows.extend(launch(a, n, (&exe, program, &extra))?);
    }
    let report = DistReport {
        preset: &a.preset,
        objectives,
        rows: &rows,
        one_machine: extra.is_empty() && a.distributed.iter().any(|&n| n > 1),
    };
    println!("{report}");
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    Ok(())
}

/// One `n`-rank job of this binary's `bench train --rank-bench` under the launcher `program`
/// (and its `extra` arguments): the rows rank 0 printed.
fn launch(
    a: &TrainBenchArgs,
    n: usize,
    (exe, program, extra): (&std::path::Path, &str, &[&str]),
) -> Result<Vec<DistBench>> {
    let mut cmd = std::process::Command::new(program);
    if is_root() {
        // OpenMPI refuses to start as root unless told this is intended.
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    if !crate::runtime::threads_chosen() {
        // Each rank then takes its share of the cores (this process set the variable).
        cmd.env_remove("RAYON_NUM_THREADS");
    }
    cmd.args(extra)
        // OpenMPI binds each of a few ranks to one core by default, which would put all
        // of a rank's compute threads on that core.
        .args(["-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"])
        .arg(exe)
        .args(["bench", "train", "--rank-bench", "--preset", &a.preset])
        .args(["--objective", &a.objective])
        .args([
            "--warmup",
            &a.warmup.to_string(),
            "--steps",
            &a.steps.to_string(),
        ]);
    for s in &a.sets {
        cmd.args(["--set", s]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {program} (is OpenMPI installed?)"))?;
    if !out.status.success() {
        bail!("the {n}-rank measurement failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
