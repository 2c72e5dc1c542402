//! The `triage` binary: parse arguments, set up logging, run the command.

mod cli;

use clap::Parser;

// glibc's malloc kept the memory of a 2,000-stream flood (RSS 64 MB -> 1 GB and stayed) and
// paid for every decision record freed on the writer thread that another thread allocated;
// mimalloc returns freed pages and frees across threads cheaply.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // One JSON object per line for log pipelines; fields (decision_id, tier, ...) stay fields.
    if std::env::var("TRIAGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    match cli::run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
