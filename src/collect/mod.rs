//! `triage collect`: run the user's own prompts through every tier, score the answers, and write
//! outcome rows that `train`, `eval`, `tune` and `report` read.
//!
//! Calls go through the gateway exactly as served completions do (retries, fallbacks,
//! breakers, the call deadline). A row is written only when every tier answered and was
//! scored, after its answers, so an interrupted run loses nothing written and a rerun skips
//! finished rows; a tier that fails is recorded in `OUT.failures.jsonl` and retried by the next
//! run, never scored 0.

pub mod judge;
pub mod matcher;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::chain::Gateway;
use crate::config::{Config, ModelRef};
use crate::providers::{ChatMessage, ChatRequest, Role};
pub use matcher::Match;

/// Largest prompts file read.
pub const MAX_PROMPTS_BYTES: u64 = 1 << 30;

/// Why `collect` could not run (failures of single calls are not errors: they are recorded).
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A line of the prompts file is unusable; nothing was called.
    #[error("{path}:{line}: {message}")]
    Input {
        /// The prompts file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The options do not fit the config.
    #[error("{0}")]
    Options(String),
}

/// One line of the prompts file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    id: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<MessageLine>>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    reference: Option<serde_json::Value>,
    #[serde(default, rename = "match")]
    matcher: Option<Match>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageLine {
    role: String,
    content: String,
}

/// A validated prompt: its conversation, and how its answers are scored.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Unique id.
    pub id: String,
    /// The conversation sent to every tier.
    pub messages: Vec<ChatMessage>,
    /// The text the router featurizes (the last user message), written as the row's prompt.
    pub routed: String,
    /// Source, for training's intercept groups.
    pub source: Option<String>,
    /// Category, for reports.
    pub category: Option<String>,
    /// How answers are scored.
    pub scoring: Scoring,
}

/// How one prompt's answers are scored.
#[derive(Debug, Clone, PartialEq)]
pub enum Scoring {
    /// Against a reference, deterministically.
    Reference(Match, String),
    /// By the judge.
    Judge,
}

/// Reads and checks the whole prompts file before anything is called: ids unique and non-empty,
/// one of `prompt`/`messages`, references that their matcher accepts, and the judge present
/// when some row has no reference.
pub fn read_prompts(path: &Path, judge: bool) -> Result<Vec<Prompt>, CollectError> {
    let bytes =
        crate::files::read_regular(path, MAX_PROMPTS_BYTES).map_err(|source| CollectError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let bad = |line: usize, message: String| CollectError::Input {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| bad(0, format!("not UTF-8: {e}")))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let p: PromptLine = serde_json::from_str(raw).map_err(|e| bad(line, e.to_string()))?;
        if p.id.trim().is_empty() {
            return Err(bad(line, "id: must not be empty".into()));
        }
        if !seen.insert(p.id.clone()) {
            return Err(bad(line, format!("id {:?} appears twice", p.id)));
        }
        let messages = match (p.prompt, p.messages) {
            (Some(t), None) => vec![ChatMessage {
                role: Role::User,
                content: t,
                ..ChatMessage::default()
            }],
            (None, Some(ms)) => ms
                .into_iter()
                .enumerate()
                .map(|(j, m)| {
                    Role::parse(&m.role)
                        .filter(|r| *r != Role::Tool)
                        .map(|role| ChatMessage {
                            role,
                            content: m.content,
                            ..ChatMessage::default()
                        })
                        .ok_or_else(|| {
                            bad(
                                line,
                                format!(
                                    "messages[{j}].role: {:?} is not system, user or assistant",
                                    m.role
                                ),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad(line, "give exactly one of prompt and messages".into())),
        };
        let routed = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .filter(|t| crate::service::has_visible_text(t))
            .ok_or_else(|| bad(line, "no user message with visible text".into()))?;
        let scoring = match p.reference {
            None | Some(serde_json::Value::Null) => {
                if p.matcher.is_some() {
                    return Err(bad(line, "match: needs a reference".into()));
                }
                if !judge {
                    return Err(bad(
                        line,
                        "no reference, and no --judge to score its answers".into(),
                    ));
                }
                Scoring::Judge
            }
            Some(v) => {
                let reference = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                let m = p.matcher.unwrap_or_else(|| Match::default_for(&reference));
                m.check(&reference)
                    .map_err(|e| bad(line, format!("reference ({m:?}): {e}")))?;
                Scoring::Reference(m, reference)
            }
        };
        out.push(Prompt {
            id: p.id,
            messages,
            routed,
            source: p.source,
            category: p.category,
            scoring,
        });
    }
    Ok(out)
}

/// What `collect` is asked to do.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Where outcome rows go; answers and failures go beside it.
    pub out: PathBuf,
    /// Tiers to call, by name (every configured tier when empty).
    pub tiers: Vec<String>,
    /// The judge for rows without a reference.
    pub judge: Option<ModelRef>,
    /// Prompts in flight at once (each calls every tier at once).
    pub concurrency: usize,
    /// `max_tokens` of every tier's call.
    pub max_tokens: u32,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Prompts in the file.
    pub prompts: usize,
    /// Prompts already done by an earlier run, skipped.
    pub skipped: usize,
    /// Prompts written this run.
    pub written: usize,
    /// Prompts with at least one failed tier (not written; a rerun retries them).
    pub failed: usize,
    /// Estimated spend per tier this run, USD (provider-counted tokens × the tier's prices).
    pub spend_usd: BTreeMap<String, f64>,
    /// Judge calls made and their tokens (input, output).
    pub judge_calls: usize,
    /// Judge tokens.
    pub judge_tokens: (u64, u64),
}

/// `OUT.answers.jsonl`, `OUT.failures.jsonl` beside `out`.
pub fn side_file(out: &Path, what: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "outcomes".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}.{what}.jsonl"))
}

/// One tier's answer to one prompt, as written to the answers file.
#[derive(Debug, Serialize)]
struct AnswerLine<'a> {
    id: &'a str,
    tier: &'a str,
    #[serde(flatten)]
    scored: &'a Scored,
}

/// One scored answer.
#[derive(Debug, Clone, Serialize)]
struct Scored {
    provider: String,
    model: String,
    answer: String,
    score: f64,
    scored_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    judge_reply: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    attempts: usize,
    /// Counted in the summary, not written per answer.
    #[serde(skip)]
    judge_tokens: Option<(u64, u64)>,
}

/// The outcome row (the format `train` reads).
#[derive(Debug, Serialize)]
struct OutcomeLine<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'a str>,
    prompt: &'a str,
    outcomes: BTreeMap<&'a str, f64>,
}

/// Ids already written to `out` by an earlier run (after [`trim_partial`]).
fn resume(out: &Path) -> Result<HashSet<String>, CollectError> {
    trim_partial(out)?;
    let text = match std::fs::read_to_string(out) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(source) => {
            return Err(CollectError::Io {
                path: out.to_path_buf(),
                source,
            });
        }
    };
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Id>(l).ok())
        .map(|r| r.id)
        .collect())
}

/// Drops a last line cut off by an interruption (its prompt is redone), so the next append
/// starts on a line of its own and never glues two rows together.
fn trim_partial(path: &Path) -> Result<(), CollectError> {
    let io = |source| CollectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io)?;
        f.set_len(whole as u64).map_err(io)?;
    }
    Ok(())
}

fn append(path: &Path) -> Result<std::fs::File, CollectError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| CollectError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Calls one tier for one prompt and scores its answer.
async fn answer_and_score(
    gateway: &Gateway,
    config: &Config,
    tier: usize,
    prompt: &Prompt,
    opts: &CollectOptions,
) -> Result<Scored, String> {
    let t = &config.tiers[tier];
    let req = ChatRequest {
        messages: prompt.messages.clone(),
        max_tokens: Some(opts.max_tokens),
        ..ChatRequest::default()
    };
    let deadline = Instant::now() + config.gateway.call_timeout;
    let answered = gateway
        .run(&t.chain, &req, false, deadline)
        .await
        .map_err(|e| e.to_string())?;
    let member = &t.chain[answered.member];
    let r = answered.response;
    let cost_usd = t.cost_usd(r.input_tokens, r.output_tokens);
    let (score, scored_by, judge_reply, judge_tokens) = match &prompt.scoring {
        Scoring::Reference(m, reference) => (
            m.score(&r.text, reference),
            format!("{m:?}").to_lowercase(),
            None,
            None,
        ),
        Scoring::Judge => {
            let j = opts
                .judge
                .as_ref()
                .ok_or_else(|| "no judge configured".to_string())?;
            let question = if prompt.messages.len() == 1 {
                prompt.routed.clone()
            } else {
                prompt
                    .messages
                    .iter()
                    .map(|m| format!("{}: {}", m.role.as_str(), m.content))
                    .collect::<Vec<_>>()
                    .join("\n\n")
            };
            let jreq = ChatRequest {
                messages: vec![
                    ChatMessage {
                        role: Role::System,
                        content: judge::JUDGE_SYSTEM.into(),
                        ..ChatMessage::default()
                    },
                    ChatMessage {
                        role: Role::User,
                        content: judge::judge_prompt(&question, &r.text),
                        ..ChatMessage::default()
                    },
                ],
                temperature: Some(0.0),
                max_tokens: Some(2048),
                ..ChatRequest::default()
            };
            let deadline = Instant::now() + config.gateway.call_timeout;
            let judged = gateway
                .run(std::slice::from_ref(j), &jreq, false, deadline)
                .await
                .map_err(|e| format!("judge: {e}"))?;
            let jr = judged.response;
            let score = judge::parse_rating(&jr.text).map_err(|e| format!("judge: {e}"))?;
            (
                score,
                format!("judge {} {}/{}", judge::JUDGE_VERSION, j.provider, j.model),
                Some(jr.text),
                Some((jr.input_tokens, jr.output_tokens)),
            )
        }
    };
    Ok(Scored {
        provider: member.provider.clone(),
        model: member.model.clone(),
        answer: r.text,
        score,
        scored_by,
        judge_reply,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cost_usd,
        attempts: answered.attempts.len(),
        judge_tokens,
    })
}

/// Runs every prompt not yet in `opts.out` through every tier, writing answers, outcome rows
/// and failures as each prompt finishes. `progress` is advanced once per prompt.
pub async fn collect(
    config: Arc<Config>,
    gateway: Arc<Gateway>,
    prompts: Vec<Prompt>,
    opts: CollectOptions,
    progress: indicatif::ProgressBar,
) -> Result<Summary, CollectError> {
    let tiers: Vec<usize> = if opts.tiers.is_empty() {
        (0..config.tiers.len()).collect()
    } else {
        opts.tiers
            .iter()
            .map(|n| {
                config
                    .tiers
                    .iter()
                    .position(|t| t.name == *n)
                    .ok_or_else(|| {
                        CollectError::Options(format!(
                            "--tiers: no tier named {n:?} in the config (it has {})",
                            config
                                .tiers
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
            })
            .collect::<Result<_, _>>()?
    };
    if let Some(j) = &opts.judge
        && !config.providers.iter().any(|p| p.name == j.provider)
    {
        return Err(CollectError::Options(format!(
            "--judge: no provider named {:?} in the config",
            j.provider
        )));
    }
    if opts.concurrency == 0 {
        return Err(CollectError::Options(
            "--concurrency must be at least 1".into(),
        ));
    }
    let answers_path = side_file(&opts.out, "answers");
    let failures_path = side_file(&opts.out, "failures");
    let done = resume(&opts.out)?;
    trim_partial(&answers_path)?;
    trim_partial(&failures_path)?;
    let mut out = append(&opts.out)?;
    let mut answers = append(&answers_path)?;
    let mut failures = append(&failures_path)?;
    let mut summary = Summary {
        prompts: prompts.len(),
        ..Summary::default()
    };
    let todo: Vec<Prompt> = prompts
        .into_iter()
        .filter(|p| !done.contains(&p.id))
        .collect();
    summary.skipped = summary.prompts - todo.len();
    progress.set_length(todo.len() as u64);
    let opts = Arc::new(opts);
    let mut pending = todo.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let spawn = |running: &mut tokio::task::JoinSet<_>, p: Prompt| {
        let (config, gateway, opts, tiers) =
            (config.clone(), gateway.clone(), opts.clone(), tiers.clone());
        running.spawn(async move {
            let mut calls = tokio::task::JoinSet::new();
            let p = Arc::new(p);
            for (slot, &t) in tiers.iter().enumerate() {
                let (config, gateway, opts, p) =
                    (config.clone(), gateway.clone(), opts.clone(), p.clone());
                calls.spawn(async move {
                    (
                        slot,
                        answer_and_score(&gateway, &config, t, &p, &opts).await,
                    )
                });
            }
            let mut results: Vec<Option<Result<Scored, String>>> = vec![None; tiers.len()];
            while let Some(r) = calls.join_next().await {
                match r {
                    Ok((slot, res)) => results[slot] = Some(res),
                    Err(e) => return (p, Err(format!("a call task failed: {e}"))),
                }
            }
            (p, Ok(results))
        });
    };
    for p in pending.by_ref().take(opts.concurrency) {
        spawn(&mut running, p);
    }
    let write = |file: &mut std::fs::File, path: &Path, line: String| {
        writeln!(file, "{line}")
            .and_then(|()| file.flush())
            .map_err(|source| CollectError::Io {
                path: path.to_path_buf(),
                source,
            })
    };
    while let Some(joined) = running.join_next().await {
        let (p, results) =
            joined.map_err(|e| CollectError::Options(format!("a prompt task failed: {e}")))?;
        let results: Vec<Result<Scored, String>> = match results {
            Ok(r) => r
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err("no result".into())))
                .collect(),
            Err(e) => vec![Err(e); tiers.len()],
        };
        let mut outcomes = BTreeMap::new();
        let mut failed = false;
        for (r, &t) in results.iter().zip(&tiers) {
            let name = config.tiers[t].name.as_str();
            match r {
                Ok(s) => {
                    *summary.spend_usd.entry(name.to_string()).or_default() += s.cost_usd;
                    if let Some((i, o)) = s.judge_tokens {
                        summary.judge_calls += 1;
                        summary.judge_tokens.0 += i;
                        summary.judge_tokens.1 += o;
                    }
                    outcomes.insert(name, s.score);
                }
                Err(e) => {
                    failed = true;
                    let line = serde_json::json!({"id": p.id, "tier": name, "error": e});
                    write(&mut failures, &failures_path, line.to_string())?;
                }
            }
        }
        if failed {
            summary.failed += 1;
        } else {
            for (r, &t) in results.iter().zip(&tiers) {
                if let Ok(s) = r {
                    let line = AnswerLine {
                        id: &p.id,
                        tier: &config.tiers[t].name,
                        scored: s,
                    };
                    write(&mut answers, &answers_path, json_line(&line)?)?;
                }
            }
            let row = OutcomeLine {
                id: &p.id,
                source: p.source.as_deref(),
                category: p.category.as_deref(),
                prompt: &p.routed,
                outcomes,
            };
            write(&mut out, &opts.out, json_line(&row)?)?;
            summary.written += 1;
        }
        let spent: f64 = summary.spend_usd.values().sum();
        progress.set_message(format!("spent ${spent:.4}, {} failed", summary.failed));
        progress.inc(1);
        if let Some(next) = pending.next() {
            spawn(&mut running, next);
        }
    }
    progress.finish_and_clear();
    Ok(summary)
}

fn json_line<T: Serialize>(v: &T) -> Result<String, CollectError> {
    serde_json::to_string(v).map_err(|e| CollectError::Options(format!("serializing a row: {e}")))
}

#[cfg(test)]
mod tests;
