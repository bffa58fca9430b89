//! The `card` command line: parse, dispatch, print errors as one line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// glibc malloc returns large tensor buffers to the kernel and re-faults them every step.
// Counted, so `card bench decode` can report allocations per token.
#[global_allocator]
static GLOBAL: card::alloc::Counting<mimalloc::MiMalloc> =
    card::alloc::Counting(mimalloc::MiMalloc);

// mimalloc itself still hands freed pages back to the kernel after a short delay (its "purge"),
// so a training step's multi-megabyte activations were re-faulted and zeroed by the kernel every
// step (~15% of a bench-5m step). Never purging keeps them in the process.
extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same index in v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

fn keep_freed_memory() {
    // The user's own MIMALLOC_PURGE_DELAY wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's option setter takes plain integers and is safe to call at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Causal Autoregressive Diffusion (CARD) language models: train, decode, evaluate.
#[derive(Parser)]
#[command(name = "card", version, about, long_about = None)]
struct Cli {
    /// Compute threads (default: RAYON_NUM_THREADS, else the number of physical cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// Fix the thread count once, through the variable candle and rayon read. candle otherwise
/// recomputes its default, reading /proc/cpuinfo, on every CPU matmul: measured at ~15% of
/// a batch-1 decoding step.
fn set_threads(threads: Option<usize>) -> Result<(), String> {
    let n = match threads {
        Some(0) => return Err("--threads must be at least 1".into()),
        Some(n) => n,
        None => candle_core::utils::get_num_threads(),
    };
    // Before any thread pool exists (both are built lazily) and before other threads start.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and prepare corpora (tokenizer, token shards).
    Data(card::cli::data::DataArgs),
    /// Train a model (CARD by default) from a preset; resumable.
    Train(card::cli::train::TrainArgs),
    /// Validation loss, perplexity and bits per byte of a checkpoint.
    Eval(card::cli::eval::EvalArgs),
    /// Generate text with AR or CARD dynamic parallel decoding.
    Generate(card::cli::generate::GenerateArgs),
    /// Inspect the noise schedule, parameter counts and configs.
    Inspect(card::cli::inspect::InspectArgs),
    /// Run one of the paper's experiments (report, CSV and plots in results/NAME).
    Experiment(card::cli::experiment::ExperimentArgs),
    /// Throughput benchmarks (ratios against a baseline in the same run).
    Bench(card::cli::bench::BenchArgs),
    /// Serve a checkpoint over an OpenAI-compatible HTTP API, with a decoding playground.
    Serve(card::cli::serve::ServeArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = set_threads(cli.threads) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // Ctrl-C / SIGTERM: the trainer saves a checkpoint and stops; a second signal exits.
    let _ = ctrlc::set_handler(|| {
        if card::train::STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let result = match cli.command {
        Command::Data(a) => card::cli::data::run(a),
        Command::Train(a) => card::cli::train::run(a),
        Command::Eval(a) => card::cli::eval::run(a),
        Command::Generate(a) => card::cli::generate::run(a),
        Command::Inspect(a) => card::cli::inspect::run(a),
        Command::Experiment(a) => card::cli::experiment::run_cli(a),
        Command::Bench(a) => card::cli::bench::run(a),
        Command::Serve(a) => card::cli::serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
