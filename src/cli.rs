//! Command-line arguments (clap) and their dispatch to library calls; the only home of `anyhow`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use triage::config::Config;
use triage::engine::{Engine, RouteInput};
use triage::features::Featurizer;
use triage::feedback::now_ms;
use triage::model_store::ModelStore;
use triage::train::dataset::{TierMap, read_jsonl};
use triage::train::{self, Recipe, Report, TrainOptions};

/// triage: an adaptive LLM request router.
#[derive(Debug, Parser)]
#[command(name = "triage", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API (triage.v1.Router, health, reflection).
    Serve(ServeArgs),
    /// Route one prompt, or a JSON Lines file of prompts, and print the decisions as JSON.
    Route(RouteArgs),
    /// Fit a classifier from labelled outcomes and write a model file.
    Train(TrainArgs),
    /// Cross-validate a recipe (or measure a model file) on labelled outcomes.
    Eval(EvalArgs),
    /// Validate a config file and print the tiers it defines.
    CheckConfig(ConfigArg),
    /// Work with the decision log.
    #[command(subcommand)]
    Logs(LogsCommand),
    /// Choose tier thresholds that meet a cost, share or quality target on labelled data.
    Tune(TuneArgs),
    /// Run your own prompts through every tier, score the answers (reference or judge) and
    /// write outcome rows for train, eval, tune and report.
    Collect(CollectArgs),
    /// Before switching: the cost–quality picture of a model on your labelled rows, as
    /// Markdown and an SVG plot, with suggested thresholds.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
struct ReportArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The model to measure.
    #[arg(long, default_value = "models/classifier.json", env = "TRIAGE_MODEL")]
    model: PathBuf,
    /// Labelled JSON Lines file (repeatable), e.g. what `triage collect` wrote.
    #[arg(long = "dataset", required = true)]
    datasets: Vec<PathBuf>,
    /// Which dataset model stands for each tier, NAME=MODEL[|MODEL…],… (default: outcomes
    /// keyed by tier name, as `collect` writes them).
    #[arg(long)]
    tiers: Option<TierMap>,
    /// Quality floors to suggest thresholds for, as shares of always-dearest quality.
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.95,0.98,0.99")]
    floors: Vec<f64>,
    /// The Markdown file to write; the SVG plot goes beside it (same name, .svg).
    #[arg(long, default_value = "report.md")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct CollectArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// JSON Lines: {"id", "prompt" | "messages", "source"?, "category"?, "reference"?, "match"?}.
    #[arg(long)]
    prompts: PathBuf,
    /// Outcome rows are appended here (answers to OUT.answers.jsonl, failures to
    /// OUT.failures.jsonl); prompts already in it are skipped.
    #[arg(long)]
    out: PathBuf,
    /// Tiers to call, by config name (default: every tier).
    #[arg(long, value_delimiter = ',')]
    tiers: Vec<String>,
    /// PROVIDER/MODEL from the config's providers that scores answers without a reference.
    #[arg(long)]
    judge: Option<String>,
    /// Prompts in flight at once (each calls every tier at once).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// max_tokens of every tier's answer.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
}

#[derive(Debug, Args)]
struct TuneArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The model whose thresholds to tune.
    #[arg(long, default_value = "models/classifier.json", env = "TRIAGE_MODEL")]
    model: PathBuf,
    /// Labelled JSON Lines file (repeatable).
    #[arg(long = "dataset", required = true)]
    datasets: Vec<PathBuf>,
    /// Which dataset model stands for each of the model's tiers: NAME=MODEL[|MODEL…],…
    #[arg(long)]
    tiers: TierMap,
    /// Spend at most this many USD per 1,000 requests (prices and expected output tokens from
    /// the config, input tokens from each prompt); best quality within it.
    #[arg(long)]
    max_cost_per_1k_requests: Option<f64>,
    /// At most this share of requests on a tier, e.g. frontier=0.2 (repeatable).
    #[arg(long = "max-share", value_parser = parse_share)]
    max_share: Vec<(String, f64)>,
    /// At least this mean quality; least cost that reaches it.
    #[arg(long)]
    min_quality: Option<f64>,
    /// Where to write the tuned model (default: overwrite --model).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to draw the cost–quality curve (SVG).
    #[arg(long, default_value = "tune.svg")]
    plot: PathBuf,
}

fn parse_share(s: &str) -> Result<(String, f64), String> {
    let (t, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not TIER=SHARE"))?;
    let v: f64 = v
        .parse()
        .map_err(|_| format!("{s:?}: share must be a number in [0, 1]"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s:?}: share must be in [0, 1]"));
    }
    Ok((t.to_string(), v))
}

#[derive(Debug, Subcommand)]
enum LogsCommand {
    /// Print decisions joined with their outcomes as JSON Lines (then orphan outcomes).
    Export(ExportArgs),
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The feedback store (a serve --data-dir).
    #[arg(long, env = "TRIAGE_DATA_DIR")]
    data_dir: PathBuf,
    /// Only decisions made at or after this time: Unix milliseconds, or an age such as 30m, 12h, 7d.
    #[arg(long)]
    since: Option<String>,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Config file (TOML). Without it the shipped defaults are used.
    #[arg(long, env = "TRIAGE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Listen address; overrides server.addr.
    #[arg(long, env = "TRIAGE_ADDR")]
    addr: Option<SocketAddr>,
    /// Classifier model file; overrides model.classifier.
    #[arg(long, env = "TRIAGE_MODEL")]
    model: Option<PathBuf>,
    /// Feedback store directory; overrides feedback.data_dir.
    #[arg(long, env = "TRIAGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Also serve the OpenAI-compatible HTTP front door here (e.g. 127.0.0.1:8080).
    #[arg(long, env = "TRIAGE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct RouteArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Classifier model file; overrides model.classifier.
    #[arg(long, env = "TRIAGE_MODEL")]
    model: Option<PathBuf>,
    /// JSON Lines input: outcome-format or {"id","prompt"} lines; prints one JSON line each.
    #[arg(long, conflicts_with = "prompt")]
    batch: Option<PathBuf>,
    /// Cheapest allowed tier.
    #[arg(long)]
    min_tier: Option<String>,
    /// Dearest allowed tier.
    #[arg(long)]
    max_tier: Option<String>,
    /// Replaces every threshold, in [0, 1].
    #[arg(long)]
    quality_target: Option<f64>,
    /// The prompt to route.
    #[arg(required_unless_present = "batch")]
    prompt: Option<String>,
}

#[derive(Debug, Args)]
struct DataArgs {
    /// Labelled JSON Lines file (repeatable).
    #[arg(long = "dataset")]
    datasets: Vec<PathBuf>,
    /// Tiers, cheapest first: NAME=MODEL[|MODEL…],… (MODEL = a key of the rows' outcomes).
    /// Needed with --dataset.
    #[arg(long)]
    tiers: Option<TierMap>,
    /// Model2vec directory for the featurizer.
    #[arg(long, default_value = "models/embeddings", env = "TRIAGE_EMBEDDINGS")]
    embeddings: PathBuf,
    /// Price of one request per tier (comma-separated, cheapest first), for cost figures and
    /// threshold tuning.
    #[arg(long, value_delimiter = ',')]
    prices: Option<Vec<f64>>,
    /// Quality to keep, as a share of always-dearest quality, when tuning thresholds.
    #[arg(long, default_value_t = 0.95)]
    target_quality: f64,
    /// Tune thresholds to keep --target-quality plus this many standard errors of the
    /// per-row shortfall on the tuning rows (0: the target exactly; thresholds tuned on a few
    /// hundred rows then miss it on new rows about half the time).
    #[arg(long, default_value_t = train::DEFAULT_FLOOR_MARGIN)]
    floor_margin: f64,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Seed for the fold assignment.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Change one setting of the training recipe, KEY=VALUE (repeatable), for experiments.
    #[arg(
        long_help = concat!(
            "Change one setting of the training recipe, KEY=VALUE (repeatable), for experiments. ",
            "The default recipe is the one shipped and measured in models/MODEL_CARD.md; changes ",
            "are recorded in the model file. Keys: ",
            triage::experimental_keys!(),
            " (see docs/training.md)."
        ),
        long = "experimental",
        value_name = "KEY=VALUE",
        help_heading = "Experimental"
    )]
    experimental: Vec<String>,
    /// Write the report as JSON here too.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// A feedback store directory or a `triage logs export` file to learn from (repeatable;
    /// outcomes in one are joined with decisions in another).
    #[arg(long = "log")]
    logs: Vec<PathBuf>,
    /// The model now serving, to compare against on the logs' time split; its tiers and
    /// thresholds carry over.
    #[arg(long, default_value = "models/classifier.json")]
    current: PathBuf,
    /// With --log: an outcome is a success at or above this quality.
    #[arg(long, default_value_t = 0.5)]
    success_threshold: f64,
    /// With --log: clip inverse-propensity weights here.
    #[arg(long, default_value_t = 50.0)]
    max_weight: f64,
    /// With --log: learn from at most this many joined decisions, the newest (0: all). Memory
    /// and time grow with every row kept (100,000 rows: about 1.2 GB and 11 s on 2 cores).
    #[arg(long, default_value_t = 100_000)]
    max_log_rows: usize,
    /// Adapt this model instead of starting from nothing: its slopes are the prior the rows
    /// move away from only as far as they show (same features and tiers; e.g. the shipped
    /// model, for a few hundred labelled rows of your own workload).
    #[arg(long, conflicts_with = "logs")]
    base: Option<PathBuf>,
    /// Where to write the model file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Measure this model file instead of cross-validating the recipe.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Repeat the cross-validation with this many fold assignments (seeds --seed,
    /// --seed + 1, …) and report each figure's mean and spread.
    #[arg(long, default_value_t = 1)]
    repeats: u64,
    /// Hold each group out in turn: train on every other group exactly as `train` would and
    /// measure the group left out (the figure that predicts a workload never trained on).
    #[arg(long, value_enum, conflicts_with_all = ["model", "repeats"])]
    leave_one_out: Option<LeaveOneOut>,
    /// With --leave-one-out: fit N rows of each held-out group (the model trained without it
    /// adapted with `train --base`, and plain `train` on those rows alone) and measure them
    /// and the unadapted model on the group's other rows.
    #[arg(long, requires = "leave_one_out")]
    adapt: Option<usize>,
    /// With --leave-one-out: bootstrap resamples of each held-out group's rows for 95 %
    /// intervals of the two-tier figures and of their margins over the baselines (0: none).
    #[arg(long, default_value_t = 1000, requires = "leave_one_out",
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    bootstrap: u32,
}

/// `--leave-one-out`: what a held-out group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LeaveOneOut {
    /// The rows' `source`.
    Source,
    /// The rows' `source/category`.
    Category,
}

fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(match &arg.config {
        Some(p) => Config::load(p)?,
        None => Config::shipped()?,
    })
}

fn engine(config: Config, model: Option<PathBuf>) -> anyhow::Result<Engine> {
    let mut config = config;
    if let Some(m) = model {
        config.model.classifier = m;
    }
    let store = ModelStore::open(&config)?;
    Ok(Engine::new(Arc::new(config), store))
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a),
        Command::Route(a) => route(a),
        Command::Train(a) => train_cmd(a),
        Command::Eval(a) => eval_cmd(a),
        Command::Logs(LogsCommand::Export(a)) => export(a),
        Command::Tune(a) => tune(a),
        Command::Collect(a) => collect(a),
        Command::Report(a) => report_cmd(a),
        Command::CheckConfig(a) => {
            let c = load_config(&a)?;
            println!(
                "config ok: {} tiers, listening on {}",
                c.tiers.len(),
                c.server.addr
            );
            for t in &c.tiers {
                let chain: Vec<String> = t
                    .chain
                    .iter()
                    .map(|m| format!("{}/{}", m.provider, m.model))
                    .collect();
                println!(
                    "  {:<10} in {:>7.3} out {:>7.3} USD/Mtok  {}",
                    t.name,
                    t.input_usd_per_mtok,
                    t.output_usd_per_mtok,
                    chain.join(" -> ")
                );
            }
            Ok(())
        }
    }
}

/// Labelled rows scored by a model, for `tune` and `report`: the rows with every tier's
/// outcome, per-row tier costs from the config's prices (each prompt's tokens,
/// `expected_output_tokens`), and the model's probabilities.
struct Labelled {
    model: triage::classifier::Classifier,
    names: Vec<String>,
    data: train::Prepared,
    complete: Vec<usize>,
    scores: Vec<Vec<f64>>,
    costs: Vec<Vec<f64>>,
    p: Vec<Vec<f64>>,
}

/// Loads and checks what [`Labelled`] holds: the model's tiers must be `--tiers`' and the
/// config's; `what` names the command in the error when no row has every tier's outcome.
fn labelled(
    config: &ConfigArg,
    model: &std::path::Path,
    datasets: &[PathBuf],
    tiers: TierMap,
    what: &str,
) -> anyhow::Result<Labelled> {
    let config = load_config(config)?;
    let featurizer = Featurizer::load(&config.model.embeddings)?;
    let model = triage::classifier::Classifier::load(model, featurizer.schema())?;
    let names = model.tiers().to_vec();
    if tiers.names() != names {
        bail!(
            "--tiers names [{}] must be the model's tiers [{}]",
            tiers.names().join(", "),
            names.join(", ")
        );
    }
    if config.tier_names() != names {
        bail!(
            "the config's tiers [{}] differ from the model's [{}] (costs come from the config)",
            config.tier_names().join(", "),
            names.join(", ")
        );
    }
    let mut rows = Vec::new();
    for d in datasets {
        rows.extend(read_jsonl(d)?);
    }
    let data = train::prepare(
        &featurizer,
        rows,
        &tiers,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )?;
    let (complete, scores) = data.complete();
    if complete.is_empty() {
        bail!("no row has an outcome for every tier; {what} needs each tier's result per prompt");
    }
    let out_tokens = u64::from(config.expected_output_tokens);
    let costs = data
        .tokens
        .iter()
        .map(|&t| {
            config
                .tiers
                .iter()
                .map(|tier| tier.cost_usd(u64::from(t), out_tokens))
                .collect()
        })
        .collect();
    let p = data.x.iter().map(|x| model.score(x)).collect();
    Ok(Labelled {
        model,
        names,
        data,
        complete,
        scores,
        costs,
        p,
    })
}

fn report_cmd(a: ReportArgs) -> anyhow::Result<()> {
    if let Some(f) = a.floors.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        bail!("--floors: {f} is not a share in (0, 1]");
    }
    let tiers = match a.tiers {
        Some(t) => t,
        None => {
            // Outcomes keyed by tier name, as `collect` writes them.
            let c = load_config(&a.config)?;
            c.tier_names()
                .join(",")
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?
        }
    };
    let Labelled {
        model,
        names,
        data,
        complete,
        scores,
        costs,
        p,
    } = labelled(
        &a.config,
        &a.model,
        &a.datasets,
        tiers,
        "a report (triage collect writes them)",
    )?;
    let groups: Vec<String> = data
        .rows
        .iter()
        .map(|r| match (&r.source, &r.category) {
            (Some(s), Some(c)) => format!("{s}/{c}"),
            (None, Some(c)) => c.clone(),
            (Some(s), None) => s.clone(),
            (None, None) => "-".into(),
        })
        .collect();
    let w = train::workload::measure(
        &names,
        &model.file().thresholds,
        &p,
        &scores,
        &costs,
        &train::report::length_p(&data, names.len()),
        &groups,
        &complete,
        &a.floors,
    );
    let svg = a.out.with_extension("svg");
    train::workload::plot(&svg, &w).map_err(|e| anyhow::anyhow!(e))?;
    let md = train::workload::markdown(
        &w,
        model.version(),
        svg.file_name().and_then(|n| n.to_str()),
    );
    std::fs::write(&a.out, &md).with_context(|| format!("writing {}", a.out.display()))?;
    print!("{md}");
    eprintln!("wrote {} and {}", a.out.display(), svg.display());
    Ok(())
}

fn collect(a: CollectArgs) -> anyhow::Result<()> {
    let config = load_config(&a.config)?;
    let judge = a
        .judge
        .as_deref()
        .map(|j| {
            j.split_once('/')
                .filter(|(p, m)| !p.is_empty() && !m.is_empty())
                .map(|(p, m)| triage::config::ModelRef {
                    provider: p.into(),
                    model: m.into(),
                })
                .ok_or_else(|| anyhow::anyhow!("--judge: {j:?} is not PROVIDER/MODEL"))
        })
        .transpose()?;
    let prompts = triage::collect::read_prompts(&a.prompts, judge.is_some())?;
    let gateway = triage::chain::Gateway::from_config(&config)
        .map_err(|e| anyhow::anyhow!(e))?
        .ok_or_else(|| {
            anyhow::anyhow!("collect calls providers: the config has none ([providers.NAME])")
        })?;
    let opts = triage::collect::CollectOptions {
        out: a.out.clone(),
        tiers: a.tiers,
        judge,
        concurrency: a.concurrency,
        max_tokens: a.max_tokens,
    };
    let bar = triage::train::progress_bar(prompts.len() as u64, "collecting");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(triage::collect::collect(
        std::sync::Arc::new(config),
        std::sync::Arc::new(gateway),
        prompts,
        opts,
        bar,
    ))?;
    let spent: f64 = summary.spend_usd.values().sum();
    eprintln!(
        "collect: {} prompts, {} done earlier, {} written, {} failed (see {}); spent ${spent:.4} ({}); judge: {} calls, {} + {} tokens",
        summary.prompts,
        summary.skipped,
        summary.written,
        summary.failed,
        triage::collect::side_file(&a.out, "failures").display(),
        summary
            .spend_usd
            .iter()
            .map(|(t, c)| format!("{t} ${c:.4}"))
            .collect::<Vec<_>>()
            .join(", "),
        summary.judge_calls,
        summary.judge_tokens.0,
        summary.judge_tokens.1,
    );
    println!("{}", serde_json::to_string(&summary)?);
    if summary.failed > 0 {
        anyhow::bail!(
            "{} prompts had a failed tier and were not written; rerun the same command to retry them",
            summary.failed
        );
    }
    Ok(())
}

/// What the feedback store keeps, and for how long (`None`: for ever).
#[derive(Debug, Clone, Copy)]
struct Retention {
    prompts_ms: Option<u64>,
    decisions_ms: Option<u64>,
}

impl Retention {
    fn applies(&self) -> bool {
        self.prompts_ms.is_some() || self.decisions_ms.is_some()
    }
}

/// Applies retention once: (stored prompts removed, decisions removed).
fn expire(
    store: &triage::feedback::Store,
    r: &Retention,
) -> Result<(usize, usize), triage::feedback::StoreError> {
    let now = now_ms();
    let decisions = match r.decisions_ms {
        Some(ms) => store.expire_decisions(now, ms)?,
        None => 0,
    };
    let prompts = match r.prompts_ms {
        Some(ms) => store.expire_prompts(now, ms)?,
        None => 0,
    };
    Ok((prompts, decisions))
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(&a.config)?;
    // Every override of the config file is said at start, so none is silent.
    if let Some(addr) = a.addr {
        tracing::info!(%addr, file = %config.server.addr, "server.addr overridden by --addr / TRIAGE_ADDR");
        config.server.addr = addr;
    }
    if let Some(d) = a.data_dir {
        tracing::info!(data_dir = %d.display(), file = %config.feedback.data_dir.display(), "feedback.data_dir overridden by --data-dir / TRIAGE_DATA_DIR");
        config.feedback.data_dir = d;
    }
    if let Some(m) = &a.model {
        tracing::info!(model = %m.display(), file = %config.model.classifier.display(), "model.classifier overridden by --model / TRIAGE_MODEL");
    }
    let addr = config.server.addr;
    let engine = Arc::new(engine(config, a.model)?);
    let fb = &engine.config().feedback;
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let retention = Retention {
        prompts_ms: fb.store_prompts.then(|| ms(fb.prompt_retention)),
        decisions_ms: fb.decision_retention.map(ms),
    };
    let feedback = if fb.enabled {
        let limits = triage::feedback::FeedbackLimits {
            decision_queue: fb.decision_queue,
            outcome_queue: fb.outcome_queue,
            batch: fb.batch,
            max_store_bytes: fb.max_store_bytes,
        };
        let options = triage::feedback::StoreOptions {
            embedding_dim: engine.store().current().featurizer.embedding_dim(),
            cache_bytes: fb.cache_bytes,
        };
        let f = triage::feedback::Feedback::start(&fb.data_dir, limits, options, fb.store_prompts)?;
        let (expired, dropped) = expire(f.store(), &retention).context("applying retention")?;
        // The size, not a count: counting reads every record, and start-up must not grow
        // with the store.
        let size = f.store().size_on_disk().unwrap_or(0);
        eprintln!(
            "feedback store {}: {:.1} MB on disk{}{}",
            fb.data_dir.display(),
            size as f64 / 1e6,
            if expired > 0 {
                format!(", {expired} expired prompts removed")
            } else {
                String::new()
            },
            if dropped > 0 {
                format!(", {dropped} decisions past feedback.decision_retention_days removed")
            } else {
                String::new()
            }
        );
        Some(f)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(engine.config().server.max_blocking_threads)
        // Idle featurizing threads go soon, and their memory with them.
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()?;
    rt.block_on(async move {
        if let Some(f) = feedback.clone().filter(|_| retention.applies()) {
            // Retention is enforced while the server runs, not only at start.
            tokio::spawn(async move {
                let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3_600));
                hourly.tick().await;
                loop {
                    hourly.tick().await;
                    let f = f.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || match expire(f.store(), &retention) {
                            Ok((p, d)) if p + d > 0 => {
                                tracing::info!(
                                    prompts = p,
                                    decisions = d,
                                    "records past retention removed"
                                )
                            }
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, "applying retention failed"),
                        })
                        .await;
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let snap = engine.store().current();
        tracing::info!(
            addr = %local,
            model_version = snap.classifier.version(),
            tiers = %engine.config().tier_names().join(","),
            "triage serving"
        );
        eprintln!(
            "triage listening on {local} (model {})",
            snap.classifier.version()
        );
        let gateway = triage::chain::Gateway::from_config(engine.config())
            .map_err(|e| anyhow::anyhow!(e))?
            .map(Arc::new);
        let http = match a.http_addr {
            Some(h) => {
                let l = tokio::net::TcpListener::bind(h)
                    .await
                    .with_context(|| format!("cannot listen on {h}"))?;
                eprintln!(
                    "triage HTTP front door on {} (OpenAI-compatible, /v1)",
                    l.local_addr()?
                );
                Some(l)
            }
            None => None,
        };
        triage::server::serve(
            engine,
            feedback.clone(),
            gateway,
            listener,
            http,
            shutdown_signal(),
        )
        .await?;
        if let Some(f) = feedback {
            f.store().flush().context("flushing the feedback store")?;
        }
        anyhow::Ok(())
    })
}

/// `--since`: Unix milliseconds, or an age with a unit (s, m, h, d).
fn parse_since(s: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num.parse().with_context(|| {
        format!("--since {s:?}: expected Unix milliseconds or an age like 30m, 12h, 7d")
    })?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("--since {s:?}: unknown unit {unit:?} (s, m, h, d)"),
    };
    Ok(now_ms().saturating_sub(n.saturating_mul(unit_ms)))
}

fn export(a: ExportArgs) -> anyhow::Result<()> {
    let since = a.since.as_deref().map(parse_since).transpose()?;
    if !a.data_dir.is_dir() {
        bail!("{}: no feedback store there", a.data_dir.display());
    }
    let store = triage::feedback::Store::open(&a.data_dir)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let n = store.export(since, &mut out)?;
    out.flush()?;
    eprintln!("exported {n} lines from {}", a.data_dir.display());
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// The features that leaned the decision most, in logit units towards the dearer tier.
fn drivers(engine: &Engine, d: &triage::engine::Decision) -> serde_json::Value {
    let snap = engine.store().current();
    snap.classifier
        .drivers(&d.features, &snap.featurizer.schema().names, 5)
        .into_iter()
        .map(|(n, v)| serde_json::json!({"feature": n, "towards_dearest": (v * 1000.0).round() / 1000.0}))
        .collect()
}

fn route(a: RouteArgs) -> anyhow::Result<()> {
    let mut config = load_config(&a.config)?;
    // Inspection shows the policy's own choice; exploration is for live traffic.
    config.exploration_rate = 0.0;
    let engine = engine(config, a.model)?;
    // The same parsing rules as the gRPC and HTTP doors: a one-message conversation.
    let input = |prompt: String| -> anyhow::Result<RouteInput> {
        let req = triage::proto::v1::RouteRequest {
            messages: vec![triage::proto::v1::Message {
                role: "user".into(),
                content: prompt,
                ..Default::default()
            }],
            min_tier: a.min_tier.clone(),
            max_tier: a.max_tier.clone(),
            quality_target: a.quality_target,
            ..Default::default()
        };
        triage::service::validate_route(req, engine.config()).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Some(path) = a.batch {
        for row in read_jsonl(&path)? {
            let id = row.id.clone();
            let d = engine.route(
                &input(row.prompt).with_context(|| format!("{}: row {id:?}", path.display()))?,
            )?;
            let p: serde_json::Map<String, serde_json::Value> = d
                .tiers
                .iter()
                .map(|(n, v)| (n.clone(), v.p_sufficient.into()))
                .collect();
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({"id": id, "tier": d.tier_name, "p_sufficient": p,
                    "reason": d.reason, "drivers": drivers(&engine, &d)}),
            )?;
            writeln!(out)?;
        }
    } else {
        let d = engine.route(&input(a.prompt.clone().unwrap_or_default())?)?;
        let tiers: Vec<serde_json::Value> = d
            .tiers
            .iter()
            .map(|(n, v)| {
                serde_json::json!({"tier": n, "p_sufficient": v.p_sufficient, "threshold": v.threshold,
                    "estimated_cost_usd": v.cost_usd, "eligible": v.eligible})
            })
            .collect();
        let chain: Vec<serde_json::Value> = d
            .chain
            .iter()
            .map(|m| serde_json::json!({"provider": m.provider, "model": m.model}))
            .collect();
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({
                "decision_id": d.decision_id.to_string(),
                "tier": d.tier_name,
                "chain": chain,
                "estimated_cost_usd": d.estimated_cost_usd,
                "tiers": tiers,
                "features": {"prompt_tokens": d.prompt_tokens, "context_tokens": d.context_tokens, "markers": d.markers.names()},
                "model_version": d.model_version,
                "reason": d.reason,
                "drivers": drivers(&engine, &d),
            }),
        )?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

impl DataArgs {
    /// The training settings these arguments ask for, checked.
    fn options(&self) -> anyhow::Result<TrainOptions> {
        let mut recipe = Recipe::default();
        for e in &self.experimental {
            recipe.set(e).map_err(|m| anyhow::anyhow!(m))?;
        }
        Ok(TrainOptions {
            recipe,
            folds: self.folds,
            seed: self.seed,
            prices: self.prices.clone(),
            target_quality: self.target_quality,
            floor_margin: self.floor_margin,
        })
    }
}

fn prepare(
    d: &DataArgs,
) -> anyhow::Result<(Featurizer, train::Prepared, TrainOptions, serde_json::Value)> {
    let Some(tiers) = &d.tiers else {
        bail!(
            "--tiers is required with --dataset (e.g. --tiers fast=small-model,frontier=big-model)"
        );
    };
    if d.datasets.is_empty() {
        bail!("give at least one --dataset (or --log for train)");
    }
    let featurizer = Featurizer::load(&d.embeddings)?;
    let mut rows = Vec::new();
    let mut sources = Vec::new();
    for path in &d.datasets {
        let r = read_jsonl(path)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        sources.push(serde_json::json!({"file": name, "rows": r.len()}));
        rows.extend(r);
    }
    if let Some(p) = &d.prices {
        if p.len() != tiers.tiers.len() {
            bail!(
                "--prices lists {} prices for {} tiers",
                p.len(),
                tiers.tiers.len()
            );
        }
        if p.iter().any(|v| !v.is_finite() || *v < 0.0) {
            bail!("--prices must be finite numbers >= 0");
        }
    }
    if !(d.floor_margin.is_finite() && d.floor_margin >= 0.0) {
        bail!(
            "--floor-margin must be a number >= 0, got {}",
            d.floor_margin
        );
    }
    if !(0.0..=1.0).contains(&d.target_quality) {
        bail!(
            "--target-quality must be in [0, 1], got {}",
            d.target_quality
        );
    }
    let data = train::prepare(
        &featurizer,
        rows,
        tiers,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )?;
    let opts = d.options()?;
    Ok((featurizer, data, opts, serde_json::Value::Array(sources)))
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn print_report(rep: &Report) {
    let kind = if rep.folds > 0 {
        format!(
            "{}-fold cross-validation (out-of-fold predictions)",
            rep.folds
        )
    } else {
        "fixed model".into()
    };
    println!("rows: {}   {kind}", rep.rows);
    for (t, pos, n) in &rep.labels {
        println!(
            "  label {t:<10} good enough on {pos}/{n} rows ({:.1}%)",
            100.0 * *pos as f64 / (*n).max(1) as f64
        );
    }
    println!("\ntwo tiers (cheapest vs dearest)   APGR   CPT(50%)  CPT(80%)");
    for g in &rep.two_tier {
        println!(
            "  {} ({} rows, cheap {:.3}, dear {:.3})",
            g.group, g.rows, g.cheap_quality, g.dear_quality
        );
        for (name, c) in [
            ("router", &g.router),
            ("length baseline", &g.length_baseline),
            ("random", &g.random_baseline),
        ] {
            println!(
                "    {name:<28} {:.3}  {:>8}  {:>8}",
                c.apgr,
                pct(c.cpt50),
                pct(c.cpt80)
            );
        }
    }
    if let Some(c) = &rep.cost {
        println!(
            "\ncost at >= {:.3} quality ({} rows; always-dearest quality {:.3}, cost {:.4}; per tier {:?})",
            c.min_quality,
            c.rows,
            c.dearest.quality,
            c.dearest.cost,
            c.tier_quality
                .iter()
                .map(|q| (q * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
        for (name, op) in [
            ("router (thresholds from other folds)", c.router),
            ("router (best threshold)", c.router_best),
            ("length baseline", c.length_baseline),
            ("random mix", c.random_baseline),
        ] {
            match op {
                Some(o) => println!(
                    "  {name:<38} quality {:.3}  cost {:.4}  saved {:>5.1}%",
                    o.quality,
                    o.cost,
                    100.0 * (1.0 - o.cost / c.dearest.cost.max(1e-12))
                ),
                None => println!("  {name:<38} target not reachable"),
            }
        }
    }
    if !rep.calibration.is_empty() {
        let c: Vec<String> = rep
            .calibration
            .iter()
            .map(|(t, e)| format!("{t} {e:.3}"))
            .collect();
        println!("\ncalibration (ECE, 10 bins): {}", c.join(", "));
    }
    if !rep.pareto.is_empty() {
        println!("\ncost–quality Pareto front of the thresholds (cost = mean price per request):");
        println!("  {:>10}  {:>8}  shares", "cost", "quality");
        let step = (rep.pareto.len() / 15).max(1);
        for (i, p) in rep.pareto.iter().enumerate() {
            if i % step == 0 || i + 1 == rep.pareto.len() {
                let shares: Vec<String> = p
                    .shares
                    .iter()
                    .map(|s| format!("{:.0}%", s * 100.0))
                    .collect();
                println!(
                    "  {:>10.4}  {:>8.4}  {}",
                    p.cost_per_1k / 1000.0,
                    p.quality,
                    shares.join(" / ")
                );
            }
        }
    }
}

fn write_report(path: Option<&Path>, rep: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(rep)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn write_model(out: &Path, file: &triage::classifier::ModelFile) -> anyhow::Result<()> {
    // Write then rename, so a watching server never reads half a file.
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(file)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "\nwrote {} (version {}, thresholds {:?})",
        out.display(),
        file.version,
        file.thresholds
    );
    Ok(())
}

fn train_cmd(a: TrainArgs) -> anyhow::Result<()> {
    if !a.logs.is_empty() {
        return train_logs(a);
    }
    let (featurizer, data, mut opts, sources) = prepare(&a.data)?;
    let tiers = a.data.tiers.as_ref().context("--tiers is required")?;
    if let Some(b) = &a.base {
        let base = triage::classifier::Classifier::load(b, featurizer.schema())
            .with_context(|| format!("--base {}", b.display()))?;
        opts.recipe.base = Some(
            train::recipe::Base::from_model(base.file(), featurizer.schema(), &tiers.names())
                .map_err(|e| anyhow::anyhow!(e))?,
        );
    }
    let (mut file, rep) = train::train(&featurizer, &data, tiers, &opts, sources)?;
    if let (Some(b), serde_json::Value::Object(m)) = (&opts.recipe.base, &mut file.training) {
        m.insert("base".into(), b.version.clone().into());
        file = train::versioned(file);
    }
    print_report(&rep);
    write_report(a.data.report.as_deref(), &rep)?;
    write_model(&a.out, &file)
}

fn print_adapted(t: &[train::transfer::Adapted]) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let own = |s: &train::transfer::Scored| {
        s.own_thresholds.map_or("-".to_string(), |(saved, q)| {
            format!("{:.1}% @{q:.3}", 100.0 * saved)
        })
    };
    println!("adapting to a held-out group from a few of its rows, measured on the rest\n");
    println!(
        "  {:<14} {:>5} {:>6}  {:>6} {:>7} {:>6} {:>6} {:>6}   APGR",
        "group", "fit", "scored", "base", "adapted", "plain", "length", "random"
    );
    for a in t {
        println!(
            "  {:<14} {:>5} {:>6}  {:>6.3} {:>7.3} {:>6.3} {:>6.3} {:>6.3}",
            a.group,
            a.adapt_rows,
            a.scored_rows,
            a.base.apgr,
            a.adapted.apgr,
            a.plain.as_ref().map_or(f64::NAN, |p| p.apgr),
            a.length.0,
            a.random.0
        );
    }
    println!(
        "\n  every tier, cost saved at the quality target (own thresholds: saving @ quality kept; best thresholds):"
    );
    for a in t.iter().filter(|a| a.base.best_thresholds.is_some()) {
        println!(
            "  {:<14} base {} / {}   adapted {} / {}   plain {} / {}   length {}   random {}",
            a.group,
            own(&a.base),
            pct(a.base.best_thresholds),
            own(&a.adapted),
            pct(a.adapted.best_thresholds),
            a.plain.as_ref().map_or("-".into(), own),
            pct(a.plain.as_ref().and_then(|p| p.best_thresholds)),
            pct(a.length.1),
            pct(a.random.1)
        );
    }
}

fn eval_cmd(a: EvalArgs) -> anyhow::Result<()> {
    let (featurizer, data, opts, _) = prepare(&a.data)?;
    if let Some(by) = a.leave_one_out {
        let tiers = a.data.tiers.as_ref().context("--tiers is required")?;
        let by = match by {
            LeaveOneOut::Source => train::transfer::GroupBy::Source,
            LeaveOneOut::Category => train::transfer::GroupBy::Category,
        };
        if let Some(n) = a.adapt {
            let t = train::transfer::adapt(&featurizer, &data, tiers, &opts, by, n)?;
            print_adapted(&t);
            return write_report(a.data.report.as_deref(), &t);
        }
        let t = train::transfer::leave_one_out(
            &featurizer,
            &data,
            tiers,
            &opts,
            by,
            a.bootstrap as usize,
        )?;
        print_transfer(&t);
        return write_report(a.data.report.as_deref(), &t);
    }
    let names = a
        .data
        .tiers
        .as_ref()
        .context("--tiers is required")?
        .names();
    let rep = match &a.model {
        Some(m) => {
            let c = triage::classifier::Classifier::load(m, featurizer.schema())?;
            if c.tiers() != names.as_slice() {
                bail!(
                    "{}: model tiers [{}] differ from --tiers [{}]",
                    m.display(),
                    c.tiers().join(", "),
                    names.join(", ")
                );
            }
            let p: Vec<Vec<f64>> = data.x.iter().map(|x| c.score(x)).collect();
            train::report::report(&data, &names, &p, None, Some(&c.file().thresholds), &opts)
        }
        None => {
            if opts.folds < 2 {
                bail!("--folds must be at least 2, got {}", opts.folds);
            }
            if a.repeats == 0 {
                bail!("--repeats must be at least 1");
            }
            let seeds: Vec<u64> = (0..a.repeats).map(|i| opts.seed.wrapping_add(i)).collect();
            let mut rep =
                train::repeated::cross_validate(featurizer.schema(), &data, &names, &opts, &seeds)?;
            if seeds.len() > 1 {
                // The first repeat in full, so its curves and Pareto front stay readable.
                print_report(&rep.reports[0]);
                print_repeated(&rep);
                return write_report(a.data.report.as_deref(), &rep);
            }
            rep.reports.remove(0)
        }
    };
    print_report(&rep);
    write_report(a.data.report.as_deref(), &rep)
}

fn print_transfer(t: &train::transfer::Transfer) {
    println!(
        "leave one group out ({:?}): trained on every other group, measured on this one",
        t.by
    );
    println!(
        "\n  {:<28} {:>6} {:>7}  {:<10} {:>7} {:>7} {:>7} {:>6}",
        "group", "rows", "trained", "cheap tier", "router", "length", "random", "ECE"
    );
    for h in &t.held_out {
        let Some(two) = h.report.two_tier.first() else {
            println!(
                "  {:<28} {:>6}  (no pair of tiers with outcomes on every row)",
                h.group, h.report.rows
            );
            continue;
        };
        let k = h.report.labels.iter().position(|l| l.0 == two.cheap_tier);
        let ece = k
            .and_then(|k| h.report.calibration.get(k))
            .map_or(f64::NAN, |c| c.1);
        println!(
            "  {:<28} {:>6} {:>7}  {:<10} {:>7.3} {:>7.3} {:>7.3} {:>6.3}",
            h.group,
            two.rows,
            h.train_rows,
            two.cheap_tier,
            two.router.apgr,
            two.length_baseline.apgr,
            two.random_baseline.apgr,
            ece
        );
    }
    let m = &t.means;
    println!(
        "  {:<28} {:>6} {:>7}  {:<10} {:>7.3} {:>7.3} {:>7.3} {:>6.3}",
        format!("mean of {} groups", m.groups),
        "",
        "",
        "",
        m.router_apgr,
        m.length_apgr,
        m.random_apgr,
        m.ece
    );
    if let Some([r, l, x]) = m.pooled {
        println!(
            "  {:<28} {:>6} {:>7}  {:<10} {:>7.3} {:>7.3} {:>7.3}",
            "all held-out rows pooled", "", "", "", r, l, x
        );
    }
    println!(
        "  the router beats both baselines on {} of {} groups (two-tier APGR)",
        m.groups_beating_both, m.groups
    );
    print_spreads(t);
    let costs: Vec<(&str, &train::report::CostAtQuality)> = t
        .held_out
        .iter()
        .filter_map(|h| Some((h.group.as_str(), h.report.cost.as_ref()?)))
        .collect();
    if !costs.is_empty() {
        println!(
            "\n  every tier, cost saved at >= {:.0}% of always-dearest quality:",
            100.0 * costs[0].1.min_quality / costs[0].1.dearest.quality.max(1e-12)
        );
        println!(
            "  {:<28} {:>6} {:>12} {:>11} {:>11} {:>8} {:>8}",
            "group", "rows", "own thresh.", "own t@qual", "best thresh.", "length", "random"
        );
        for (g, c) in costs {
            println!(
                "  {:<28} {:>6} {:>11.1}% {:>11.3} {:>11.1}% {:>7.1}% {:>7.1}%",
                g,
                c.rows,
                100.0 * c.saved(c.router),
                c.router.map_or(c.dearest.quality, |o| o.quality) / c.dearest.quality.max(1e-12),
                100.0 * c.saved(c.router_best),
                100.0 * c.saved(c.length_baseline),
                100.0 * c.saved(c.random_baseline)
            );
        }
    }
}

fn print_spreads(t: &train::transfer::Transfer) {
    let m = &t.means;
    let mut rows: Vec<(String, &train::transfer::Spread)> = t
        .held_out
        .iter()
        .filter_map(|h| Some((h.group.clone(), h.spread.as_ref()?)))
        .collect();
    rows.extend(
        m.spread
            .as_ref()
            .map(|s| (format!("mean of {} groups", m.groups), s)),
    );
    rows.extend(
        m.pooled_spread
            .as_ref()
            .map(|s| ("all held-out rows pooled".into(), s)),
    );
    let Some(resamples) = rows.first().map(|r| r.1.resamples) else {
        return;
    };
    println!(
        "\n  paired bootstrap, {resamples} resamples of the held-out rows: 95% intervals \
         (a margin whose interval holds 0 may not survive another sample of such prompts)"
    );
    println!(
        "  {:<28} {:>17} {:>17} {:>17}",
        "group", "router", "router - length", "router - random"
    );
    let iv = |[lo, hi]: [f64; 2]| format!("[{lo:+.3}, {hi:+.3}]");
    for (g, s) in rows {
        println!(
            "  {:<28} {:>17} {:>17} {:>17}",
            g,
            format!("[{:.3}, {:.3}]", s.router[0], s.router[1]),
            iv(s.minus_length),
            iv(s.minus_random)
        );
    }
}

fn print_repeated(rep: &train::repeated::Repeated) {
    println!(
        "\nrepeated cross-validation, {} fold assignments (seeds {:?}):",
        rep.seeds.len(),
        rep.seeds
    );
    println!(
        "  {:<44} {:>7} {:>7} {:>7} {:>7}  per seed",
        "figure", "mean", "sd", "min", "max"
    );
    for s in &rep.summary {
        let v: Vec<String> = s.values.iter().map(|v| format!("{v:.3}")).collect();
        println!(
            "  {:<44} {:>7.3} {:>7.3} {:>7.3} {:>7.3}  {}",
            s.figure,
            s.mean,
            s.sd,
            s.min,
            s.max,
            v.join(" ")
        );
    }
}

fn train_logs(a: TrainArgs) -> anyhow::Result<()> {
    let (featurizer, extra, opts) = if a.data.datasets.is_empty() {
        let f = Featurizer::load(&a.data.embeddings)?;
        // Logged outcomes carry their own costs; dataset prices do not apply.
        let opts = TrainOptions {
            prices: None,
            ..a.data.options()?
        };
        (f, None, opts)
    } else {
        let (f, data, opts, _) = prepare(&a.data)?;
        (f, Some(data), opts)
    };
    let current = if a.current.exists() {
        Some(triage::classifier::Classifier::load(
            &a.current,
            featurizer.schema(),
        )?)
    } else {
        None
    };
    let tiers: Vec<String> = match (&a.data.tiers, &current) {
        (Some(t), _) => t.names(),
        (None, Some(c)) => c.tiers().to_vec(),
        (None, None) => bail!(
            "--tiers is required when {} does not exist",
            a.current.display()
        ),
    };
    let log_opts = train::logs::LogOptions {
        success_threshold: a.success_threshold,
        max_weight: a.max_weight.max(1.0),
        max_rows: a.max_log_rows,
    };
    let (rows, stats) = train::logs::read_logs(&a.logs, &featurizer, &tiers, log_opts)?;
    let (file, rep) = train::logs::train_from_logs(
        &featurizer,
        &rows,
        stats,
        extra.as_ref(),
        &tiers,
        &opts,
        current.as_ref(),
    )?;
    let s = &rep.logs;
    println!(
        "logs: {} decisions, {} outcomes ({} orphans joined across stores, {} unmatched); {} rows used ({} without outcome, {} other schema, {} re-featurized, {} other tiers, {} older than the newest --max-log-rows)",
        s.decisions,
        s.outcomes,
        s.orphans_joined,
        s.orphans_unmatched,
        s.rows,
        s.without_outcome,
        s.other_schema,
        s.refeaturized,
        s.other_tiers,
        s.beyond_cap
    );
    for (t, pos, n) in &rep.labels {
        println!("  label {t:<10} good enough on {pos}/{n} logged rows");
    }
    match &rep.holdout {
        Some(h) => {
            println!(
                "time split: fitted on the oldest {} rows, measured on the newest {}",
                h.train_rows, h.test_rows
            );
            for (i, m) in h.new_model.iter().enumerate() {
                let cur = h.current_model.as_ref().map(|c| &c[i]);
                println!(
                    "  {:<10} new: log-loss {:.3} accuracy {:.3} ({} rows)   current: {}",
                    m.tier,
                    m.log_loss,
                    m.accuracy,
                    m.rows,
                    cur.map_or("-".into(), |c| format!(
                        "log-loss {:.3} accuracy {:.3}",
                        c.log_loss, c.accuracy
                    ))
                );
            }
        }
        None => println!("time split: too few rows to hold any out"),
    }
    if let Some(p) = &a.data.report {
        std::fs::write(p, serde_json::to_vec_pretty(&rep)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    write_model(&a.out, &file)
}

fn tune(a: TuneArgs) -> anyhow::Result<()> {
    use triage::train::tune;
    if a.max_cost_per_1k_requests.is_none() && a.max_share.is_empty() && a.min_quality.is_none() {
        bail!("give a target: --max-cost-per-1k-requests, --max-share TIER=x or --min-quality");
    }
    let Labelled {
        model,
        names,
        complete,
        scores,
        costs,
        p,
        ..
    } = labelled(&a.config, &a.model, &a.datasets, a.tiers, "tuning")?;
    let mut targets = tune::Targets {
        max_cost_per_1k: a.max_cost_per_1k_requests,
        min_quality: a.min_quality,
        ..Default::default()
    };
    for (t, v) in &a.max_share {
        let k = names
            .iter()
            .position(|n| n == t)
            .with_context(|| format!("--max-share: unknown tier {t:?}"))?;
        targets.max_share.push((k, *v));
    }
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(0).with_message("sweeping thresholds")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let points = tune::sweep(&p, &scores, &costs, &complete, names.len(), &bar);
    bar.finish_and_clear();
    let front = tune::pareto(&points);
    println!(
        "{} rows with every tier's outcome; Pareto front of {} threshold settings:",
        complete.len(),
        points.len()
    );
    println!(
        "  {:>14}  {:>8}  {:<24}  thresholds",
        "USD per 1k", "quality", "shares"
    );
    let step = (front.len() / 25).max(1);
    for (i, pt) in front.iter().enumerate() {
        if i % step == 0 || i + 1 == front.len() {
            let shares: Vec<String> = pt
                .shares
                .iter()
                .map(|s| format!("{:.0}%", s * 100.0))
                .collect();
            let th: Vec<String> = pt.thresholds[..names.len() - 1]
                .iter()
                .map(|t| format!("{t:.3}"))
                .collect();
            println!(
                "  {:>14.4}  {:>8.4}  {:<24}  {}",
                pt.cost_per_1k,
                pt.quality,
                shares.join(" / "),
                th.join(", ")
            );
        }
    }
    let chosen = match tune::choose(&points, &targets, &names) {
        Ok(c) => c,
        Err(why) => bail!("{why}"),
    };
    tune::plot(&a.plot, &points, &front, &chosen).map_err(|e| anyhow::anyhow!(e))?;
    let shares: Vec<String> = names
        .iter()
        .zip(&chosen.shares)
        .map(|(n, s)| format!("{n} {:.1}%", s * 100.0))
        .collect();
    println!(
        "\nchosen: thresholds {:?}: {:.4} USD per 1k requests, quality {:.4}, shares {}",
        &chosen.thresholds[..names.len() - 1],
        chosen.cost_per_1k,
        chosen.quality,
        shares.join(", ")
    );
    if let Some(m) = a.max_cost_per_1k_requests
        && chosen.cost_per_1k < 0.95 * m
    {
        println!(
            "note: the budget is not binding: the best quality reachable within it ({:.4}) already costs only {:.4} per 1k",
            chosen.quality, chosen.cost_per_1k
        );
    }
    println!("curve drawn to {}", a.plot.display());
    let note = serde_json::json!({
        "datasets": a.datasets.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
        "max_cost_per_1k_requests": a.max_cost_per_1k_requests,
        "min_quality": a.min_quality,
        "max_share": a.max_share,
        "realized": chosen,
    });
    let file = train::with_thresholds(model.file(), chosen.thresholds.clone(), note);
    write_model(a.out.as_ref().unwrap_or(&a.model), &file)
}
