//! The `card` command line: parse, dispatch, print errors as one line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// glibc malloc returns large tensor buffers to the kernel and re-faults them every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Causal Autoregressive Diffusion (CARD) language models: train, decode, evaluate.
#[derive(Parser)]
#[command(name = "card", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Throughput benchmarks (ratios against a baseline in the same run).
    Bench(card::cli::bench::BenchArgs),
    /// Serve a checkpoint over an OpenAI-compatible HTTP API, with a decoding playground.
    Serve(card::cli::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
