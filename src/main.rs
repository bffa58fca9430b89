use clap::{Parser, Subcommand};

/// Causal Autoregressive Diffusion language models.
#[derive(Parser)]
#[command(name = "card", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch corpora and prepare tokenized data.
    Data(card::cli::data::DataArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Data(args) => card::cli::data::run(args),
    }
}
