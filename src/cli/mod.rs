//! The `card` command line: parse, dispatch, print errors as one line. One file per
//! subcommand; clap lives only here.

pub mod bench;
pub mod data;
pub mod distill;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod generate;
pub mod import;
pub mod inspect;
pub mod serve;
pub mod train;
mod values;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Causal Autoregressive Diffusion (CARD) language models: train, decode, evaluate.
#[derive(Parser)]
#[command(name = "card", version, about, long_about = None)]
struct Cli {
    /// Compute threads (default: RAYON_NUM_THREADS, else the number of physical cores, split
    /// evenly between the MPI ranks on one machine).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Compute device: auto (the GPU when built with `--features cuda` and one is present),
    /// cpu or cuda.
    #[arg(long, global = true, value_name = "DEVICE", default_value = "auto")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and prepare corpora (tokenizer, token shards).
    Data(data::DataArgs),
    /// Train a model (CARD by default) from a preset; resumable.
    Train(train::TrainArgs),
    /// Continue training a checkpoint on its own continuations (self-distillation).
    Distill(distill::DistillArgs),
    /// Import a pretrained Llama-family model (GGUF file or Hugging Face directory).
    Import(import::ImportArgs),
    /// Export a checkpoint as a Hugging Face directory or a llama.cpp GGUF file.
    Export(export::ExportArgs),
    /// Validation loss, perplexity and bits per byte of a checkpoint.
    Eval(eval::EvalArgs),
    /// Generate text with AR or CARD dynamic parallel decoding.
    Generate(generate::GenerateArgs),
    /// Inspect the noise schedule, parameter counts and configs.
    Inspect(inspect::InspectArgs),
    /// Run one of the paper's experiments (report, CSV and plots in results/NAME).
    Experiment(experiment::ExperimentArgs),
    /// Throughput benchmarks (ratios against a baseline in the same run).
    Bench(bench::BenchArgs),
    /// Serve a checkpoint over an OpenAI-compatible HTTP API, with a decoding playground.
    Serve(serve::ServeArgs),
}

/// Parse the command line, set up the process, run the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ranks that share a machine split its cores unless told otherwise.
    let mut threads = cli
        .threads
        .or_else(|| match std::env::var_os("RAYON_NUM_THREADS") {
            Some(_) => None,
            None => crate::dist::threads_per_rank(candle_core::utils::get_num_threads()),
        });
    // Long-running work that finds the machine busy takes only the cores left free; a
    // benchmark keeps its count and warns instead, since it measures.
    let long_running = matches!(
        cli.command,
        Command::Train(_)
            | Command::Distill(_)
            | Command::Experiment(_)
            | Command::Serve(_)
            | Command::Eval(_)
    );
    if threads.is_none()
        && long_running
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
        && (cli.device == "cpu" || (cli.device == "auto" && !cfg!(feature = "cuda")))
    {
        let default = candle_core::utils::get_num_threads();
        if let Some((n, note)) = crate::runtime::machine_load::shared_machine_threads(default) {
            crate::runtime::set_thread_note(note);
            threads = Some(n);
        }
    }
    if let Err(e) = crate::runtime::set_threads(threads) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = crate::runtime::set_device(&cli.device) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // A rank of a multi-GPU job takes the GPU of its local rank.
    if let Some(local) = crate::dist::local_rank() {
        crate::runtime::set_cuda_ordinal(local);
    }
    // Ctrl-C / SIGTERM: the trainer saves a checkpoint and stops, the server drains, an
    // experiment ends its run; a second signal exits. Every other command exits at once.
    let cooperative = matches!(
        cli.command,
        Command::Train(_) | Command::Distill(_) | Command::Experiment(_) | Command::Serve(_)
    );
    crate::runtime::install_signal_handler(cooperative);
    let result = match cli.command {
        Command::Data(a) => data::run(a),
        Command::Train(a) => train::run(a),
        Command::Distill(a) => distill::run(a),
        Command::Import(a) => import::run(a),
        Command::Export(a) => export::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Experiment(a) => experiment::run_cli(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: a library error can carry a backtrace after its message.
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.lines().next().unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}
