//! The `triage` binary: parse arguments, set up logging, run the command.

mod cli;

use clap::Parser;

// glibc's malloc kept the memory of a 2,000-stream flood (RSS 64 MB -> 1 GB and stayed) and
// paid for every decision record freed on the writer thread that another thread allocated;
// mimalloc returns freed pages and frees across threads cheaply.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same index in its v2 and v3
/// headers); libmimalloc-sys does not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc v3 purges freed pages lazily (1 s delay by default), and what a flood used stayed
/// resident after it. With transparent huge
/// pages off (the `no_thp` feature) and a 10 ms delay, a 2,000-stream flood goes from 86 MB
/// idle / 171 MB after to ~63 / ~88 MB; purging at once gives back a little more (80 MB)
/// but costs ~5 % of Route throughput (benches/RESULTS.md). An operator's own
/// `MIMALLOC_PURGE_DELAY` still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores a value in mimalloc's option table; the purge
        // delay is read each time freed pages are considered for purging.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
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
