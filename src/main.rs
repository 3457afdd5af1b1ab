//! `msaas`: the one binary. This file only parses the command line and wires the crates.

mod client;
mod models;
mod progress;
mod roles;
mod run;
mod services;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "msaas",
    version,
    about = "Music-Separation-as-a-Service: songs in, stems out"
)]
struct Cli {
    /// Configuration file (default: ./msaas.toml when present).
    #[arg(long, global = true, env = "MSAAS_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Separate audio files into stems, in this process, with no servers.
    Run(run::RunArgs),
    /// The installed models and their stems; `models pull NAME` / `models import FILE...`
    /// install Demucs without PyTorch.
    Models(models::ModelsArgs),
    /// The whole service in one process: HTTP API, a worker per stage, janitor.
    Serve(roles::ServeArgs),
    /// The HTTP API only (plus the janitor), for one role per pod.
    Ingest(roles::IngestArgs),
    /// One stage's worker (decode, separate or encode), for one role per pod.
    Worker(roles::WorkerArgs),
    /// Upload a file to a running service; prints the job id.
    Submit(client::SubmitArgs),
    /// Show a job's state.
    Status(client::StatusArgs),
    /// Download a finished job's stems.
    Fetch(client::FetchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(70);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(cli.config.as_deref(), args).await,
            Command::Models(args) => models::run(cli.config.as_deref(), args).await,
            Command::Serve(args) => roles::serve(cli.config.as_deref(), args).await,
            Command::Ingest(args) => roles::ingest(cli.config.as_deref(), args).await,
            Command::Worker(args) => roles::worker(cli.config.as_deref(), args).await,
            Command::Submit(args) => client::submit(args).await,
            Command::Status(args) => client::status(args).await,
            Command::Fetch(args) => client::fetch(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
