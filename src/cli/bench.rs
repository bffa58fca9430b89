//! `card bench`: throughput benchmarks that print ratios against a baseline run in the same process.

use crate::bench::decode::{compare_precision, prompt_set};
use crate::bench::{bench_decode, bench_train, DecodeBenchConfig};
use crate::checkpoint::{self, Precision};
use crate::config::{Choice, ComputeDtype, Config, ObjectiveKind};
use crate::data::load_data;
use crate::decode::{CardDecoder, DecoderSpec, VerifyDecoder};
use crate::runtime::device as default_device;
use anyhow::{bail, Context, Result};
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
    /// Lossless verifier settings: K values, comma-separated ("" for none).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub verify: Vec<String>,
    /// Prompt sets: prose (held-out prefixes of the checkpoint's corpus), probes (counting,
    /// lists, copying), own (prose prefixes + the model's own greedy continuation), builtin
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
}

#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    #[arg(long, default_value = "small")]
    pub preset: String,
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
    /// sums; `train.compute`). Each objective runs once per entry, interleaved [default: the
    /// config's train.compute].
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

fn train(a: TrainBenchArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let objectives = parse_objectives(&a.objective)?;
    let cfg = Config::load(&a.preset, &a.sets)?;
    let computes: Vec<ComputeDtype> = if a.compute.is_empty() {
        vec![cfg.train.compute]
    } else {
        a.compute
            .iter()
            .map(|c| match c.trim() {
                "f32" => Ok(ComputeDtype::F32),
                "bf16" => Ok(ComputeDtype::Bf16),
                other => bail!("--compute: unknown '{other}' (known: f32, bf16)"),
            })
            .collect::<Result<_>>()?
    };
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
    let data = load_data(&cfg, None)?;
    if a.rank_bench {
        let comm = crate::dist::init(&device)?;
        let leader = comm.rank() == 0;
        return crate::dist::or_abort(comm.clone().as_ref(), || {
            for &o in &objectives {
                let r = crate::bench::bench_distributed(
                    &cfg,
                    &data,
                    o,
                    a.warmup,
                    a.steps,
                    comm.clone(),
                    &device,
                )?;
                if leader {
                    println!("{}", serde_json::to_string(&r)?);
                }
            }
            Ok(())
        });
    }
    if a.memory_probe {
        let probe =
            crate::bench::memory_probe(&cfg, &data, objectives[0], a.warmup, a.steps, &device)?;
        println!("{}", serde_json::to_string(&probe)?);
        return Ok(());
    }
    let tty = std::io::stderr().is_terminal();
    let variants: Vec<(ObjectiveKind, ComputeDtype)> = objectives
        .iter()
        .flat_map(|&o| computes.iter().map(move |&c| (o, c)))
        .collect();
    let mut results = bench_train(&cfg, &data, &variants, a.warmup, a.steps, &device, |m| {
        if tty {
            eprint!("\r\x1b[2K{m}")
        }
    })?;
    // Each objective's memory, measured in a process of its own.
    for r in &mut results {
        if tty {
            eprint!(
                "\r\x1b[2K{}: memory over {} steps in a process of its own",
                r.objective, a.steps
            );
        }
        if let Some(p) = probe_memory(&a, &r.objective, &r.compute) {
            r.peak_rss_mb = p.peak_rss_mb;
            r.rss_growth_mb = Some(p.rss_growth_mb);
        }
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    let c = &cfg;
    println!(
        "bench train: preset {} ({} params), batch {} x seq {} = {} tokens/step, {} threads, {}",
        a.preset,
        results[0].params,
        c.train.batch_size,
        c.train.seq_len,
        results[0].tokens_per_step,
        candle_core::utils::get_num_threads(),
        peaks(&results, device.is_cpu())
    );
    println!("objective  compute  step_time_s(median)  tokens/s  peak_rss_mb  rss_growth_mb   MFU   ratio_to_card");
    for r in &results {
        println!(
            "{:<9}  {:<7}  {:>19.4}  {:>8.0}  {:>11.0}  {:>13}  {:>4.1}%  {}",
            r.objective,
            r.compute,
            r.step_time_s,
            r.tokens_per_s,
            r.peak_rss_mb,
            r.rss_growth_mb.map_or("-".into(), |x| format!("{x:+.1}")),
            100.0 * r.mfu,
            r.ratio_to_card.map_or("-".into(), |x| format!("{x:.3}"))
        );
    }
    if a.json {
        if results.len() == 1 {
            println!("{}", serde_json::to_string(&results[0])?);
        } else {
            println!("{}", serde_json::to_string(&results)?);
        }
    }
    Ok(())
}

/// The matmul peak each compute type's MFU is measured against, e.g. "matmul peak f32 383.6
/// GFLOP/s, bf16 (amx-bf16) 1520.2 GFLOP/s".
fn peaks(results: &[crate::bench::TrainBench], cpu: bool) -> String {
    let mut seen: Vec<String> = Vec::new();
    for r in results {
        let name = match r.compute.as_str() {
            "bf16" if cpu => format!("bf16 ({})", crate::kernels::bf16::Path::best().name()),
            c => c.to_string(),
        };
        let entry = format!("{name} {:.1} GFLOP/s", r.matmul_peak_gflops);
        if !seen.contains(&entry) {
            seen.push(entry);
        }
    }
    format!("matmul peak {}", seen.join(", "))
}

fn parse_decoders(grid: &[String], verify: &[String]) -> Result<Vec<DecoderSpec>> {
    let mut out = Vec::new();
    for g in grid.iter().filter(|g| !g.is_empty()) {
        out.push(DecoderSpec::Card(
            CardDecoder::from_setting(g).context("--grid")?,
        ));
    }
    for k in verify.iter().filter(|k| !k.is_empty()) {
        let block_size = k
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--verify: '{k}' is not a block size"))?;
        let v = VerifyDecoder { block_size };
        v.validate().context("--verify")?;
        out.push(DecoderSpec::Verify(v));
    }
    Ok(out)
}

fn decode(a: DecodeBenchArgs) -> Result<()> {
    let decoders = parse_decoders(&a.grid, &a.verify)?;
    if a.batch.contains(&0) || a.lengths.contains(&0) {
        bail!("--batch and --lengths must be positive");
    }
    let device = default_device()?;
    let ckpt = checkpoint::open(&a.checkpoint, &device, !a.no_ema)?;
    if !matches!(ckpt.objective(), ObjectiveKind::Card | ObjectiveKind::Arm) {
        bail!(
            "bench decode needs a CARD or ARM checkpoint (this one is {})",
            ckpt.objective().name()
        );
    }
    let judge = match &a.judge {
        Some(p) => Some(checkpoint::open_as(p, &device, true, Precision::F32)?),
        None => None,
    };
    // A quantized (or --bf16) model is measured beside its f32 reference.
    let (reference, rounded) = match (ckpt.model.is_quantized(), a.bf16) {
        (true, true) => bail!("--bf16 rounds f32 weights; this checkpoint is already quantized"),
        (true, false) => (Some(ckpt.model.dequantized()?), None),
        (false, true) => (None, Some(ckpt.model.to_bf16()?)),
        (false, false) => (None, None),
    };
    let reference = reference.as_ref().or(rounded.as_ref().map(|_| &ckpt.model));
    let (tok, model) = (&ckpt.tokenizer, rounded.as_ref().unwrap_or(&ckpt.model));
    let data = load_data(&ckpt.config, Some(tok.clone())).ok();
    let names: Vec<String> = if a.sets.is_empty() {
        let prose = if data.is_some() { "prose" } else { "builtin" };
        vec![prose.into(), "probes".into()]
    } else {
        a.sets.clone()
    };
    let sets = names
        .iter()
        .map(|n| prompt_set(n.trim(), model, tok, data.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    // Every input is checked: measuring starts here.
    if let Some(w) = crate::bench::busy_warning() {
        eprintln!("{w}");
    }
    let tty = std::io::stderr().is_terminal();
    let fit_lengths = a.lengths.is_empty();
    let cfg = DecodeBenchConfig {
        lengths: if fit_lengths {
            vec![128]
        } else {
            a.lengths.clone()
        },
        fit_lengths,
        batches: a.batch.clone(),
        decoders,
        sets,
        rounds: a.rounds,
    };
    let judged = judge.as_ref().map(|j| (&j.model, &j.tokenizer));
    let progress = |m: &str| {
        if tty {
            eprint!("\r\x1b[2K{m}")
        }
    };
    let mut rows = Vec::new();
    let mut bandwidth = 0.0;
    for m in reference.into_iter().chain([model]) {
        let (r, bw) = bench_decode(m, tok, judged, &cfg, progress)?;
        rows.extend(r);
        bandwidth = bw;
    }
    let comparison = match reference {
        Some(r) => {
            progress("comparing quantized and f32 greedy decoding");
            let prompts = &cfg.sets[0].prompts;
            let len = cfg.lengths[0].min(model.cfg.max_seq_len / 2);
            Some(compare_precision(r, model, tok, prompts, len)?)
        }
        None => None,
    };
    if tty {
        eprint!("\r\x1b[2K");
    }
    println!(
        "bench decode: {} ({} params, {}), {} threads, copy bandwidth {:.1} GB/s, greedy, EOS ignored, median of {} rounds; judge: {}",
        ckpt.dir.display(),
        model.cfg.n_params(),
        format!("{:?}", model.dtype()).to_lowercase(),
        candle_core::utils::get_num_threads(),
        bandwidth / 1e9,
        a.rounds,
        judge.as_ref().map_or("the model itself".into(), |j| j.dir.display().to_string())
    );
    if ckpt.objective() == ObjectiveKind::Arm {
        println!("note: an ARM checkpoint never saw [MASK]: its card and verify rows measure what such a model commits untrained");
    }
    println!("set      weights     batch  len  decoder  setting           tokens/s   xAR   tok/fwd  acc/pass  kept   =AR   judge-NLL  rep4   dist2  bw%   allocs/tok  acceptance by slot");
    for r in &rows {
        let slots: Vec<String> = r
            .acceptance_by_slot
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect();
        println!(
            "{:<8} {:<10} {:>5} {:>4}  {:<7}  {:<16} {:>9.1}  {:>5.2}  {:>7.2}  {:>8}  {:>5.2}  {:>4.2}  {:>9.3}  {:>5.3}  {:>5.3}  {:>4.1}  {:>10.0}  {}",
            r.prompt_set,
            r.weights,
            r.batch,
            r.max_new_tokens,
            r.decoder,
            r.setting,
            r.tokens_per_s,
            r.ratio_to_ar,
            r.tokens_per_forward,
            r.drafts_accepted_per_pass.map_or("-".into(), |x| format!("{x:.2}")),
            r.kept_fraction,
            r.same_as_ar,
            r.judge_nll,
            r.repeated_4gram_rate,
            r.distinct_2,
            100.0 * r.bandwidth_fraction,
            r.allocs_per_token,
            slots.join(" ")
        );
    }
    if let Some(c) = &comparison {
        println!(
            "{} vs f32, greedy AR, {} tokens on {} {} prompts: {}/{} rows identical, {:.1}% of tokens agree up to each row's first difference; NLL of the f32 text: f32 {:.4}, {} {:.4} (Δ {:+.4} nats/token)",
            c.weights,
            cfg.lengths[0].min(model.cfg.max_seq_len / 2),
            c.rows,
            cfg.sets[0].name,
            c.same_rows,
            c.rows,
            100.0 * c.prefix_agreement,
            c.nll_reference,
            c.weights,
            c.nll_quantized,
            c.nll_quantized - c.nll_reference
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"rows": rows, "precision": comparison})
        );
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
    let mut rows: Vec<crate::bench::DistBench> = Vec::new();
    for &n in &a.distributed {
        eprintln!("bench train: {n} rank(s) under {program}");
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
        cmd.args(&extra)
            // OpenMPI binds each of a few ranks to one core by default, which would put all
            // of a rank's compute threads on that core.
            .args(["-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"])
            .arg(&exe)
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
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(r) = serde_json::from_str(line) {
                rows.push(r);
            }
        }
    }
    let cores = candle_core::utils::get_num_threads();
    println!(
        "bench train --distributed: preset {}, {} tokens per global step, {} cores here",
        a.preset,
        rows.first().map_or(0, |r| r.tokens_per_step),
        cores
    );
    println!("objective  ranks  threads/rank  step_time_s  comm_s/step  tokens/s  tokens/s/rank  speedup  efficiency");
    for o in objectives {
        let of: Vec<&crate::bench::DistBench> =
            rows.iter().filter(|r| r.objective == o.name()).collect();
        let Some(base) = of.first() else { continue };
        let base_n = base.ranks as f64;
        for r in &of {
            let speedup = base.step_time_s / r.step_time_s;
            println!(
                "{:<9}  {:>5}  {:>12}  {:>11.4}  {:>11.4}  {:>8.0}  {:>13.0}  {:>6.2}x  {:>9.0}%",
                r.objective,
                r.ranks,
                r.threads_per_rank,
                r.step_time_s,
                r.comm_time_s,
                r.tokens_per_s,
                r.tokens_per_s_per_rank,
                speedup,
                100.0 * speedup * base_n / r.ranks as f64
            );
        }
    }
    if extra.is_empty() && a.distributed.iter().any(|&n| n > 1) {
        println!("note: every rank ran on this machine, sharing its {cores} cores, so more ranks add no compute here; comm_s/step is the cost the transport adds per step");
    }
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    Ok(())
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
