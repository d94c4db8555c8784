//! The command line (clap): parses verbs, loads the spec, builds the plan and engine, and
//! is the only place that prints for humans. Called by src/main.rs. Every data verb has
//! `--json` with a stable shape (documented on each `*_json` function).
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::engine::{Engine, NodeReport, Outcome, RunOptions};
use crate::plan::Plan;
use crate::spec::Spec;
use crate::store::{Artifact, Store};

/// Online self-play red-teaming as a content-addressed DAG of stages.
#[derive(Debug, Parser)]
#[command(name = "self-redteam", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every verb.
#[derive(Debug, Args)]
pub struct Global {
    /// Pipeline file; relative paths inside it are resolved against its directory.
    #[arg(long, global = true, default_value = "pipeline.yaml")]
    pub config: PathBuf,
    /// Artifact store directory.
    #[arg(long, global = true, default_value = "artifacts")]
    pub store: PathBuf,
    /// Log level (error, warn, info, debug, trace); never affects results.
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline: skip cached nodes, run the rest in order. Running again resumes.
    Run {
        /// Number of iterations (default: the spec's run.iterations).
        #[arg(long)]
        iterations: Option<u32>,
        /// Run only these nodes (`prep@2`, `dataset`); their inputs must be cached.
        #[arg(long, num_args = 1..)]
        only: Vec<String>,
        /// Run this node and everything downstream of it.
        #[arg(long)]
        from: Option<String>,
        /// Recompute selected nodes even when cached.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the plan's nodes with their inputs.
    Plan {
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Every node of the plan: cached, stale (with the reason) or missing.
    Status {
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// One row per iteration with the headline metrics (rewards, ASR, refusal,
    /// over-refusal, diversity, judge accuracy) that exist so far.
    Log {
        #[arg(long)]
        iterations: Option<u32>,
        /// Every manifest metric instead of the headline columns.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write one self-contained HTML report (plots over iterations, judge accuracy, examples).
    Report {
        /// Output file.
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Runs side by side: final (and base) evaluation of each RUN (a pipeline file,
    /// resolved against --store, or a store directory).
    Compare {
        #[arg(value_name = "RUN", required = true, num_args = 1..)]
        runs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Manifest and first rows of an artifact (REF: `stage@iter`, a key or a key prefix).
    Show {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(long, default_value_t = 5)]
        rows: usize,
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// The tree of inputs of an artifact back to the sources.
    Lineage {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Why a node is not cached: one sentence per key component that differs.
    Explain {
        #[arg(value_name = "NODE")]
        reference: String,
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Recheck artifact digests; `--recompute` re-executes and compares bytes.
    Verify {
        #[arg(value_name = "REF")]
        reference: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        recompute: bool,
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Sample from a policy: a store REF (`base`, `update@3`, a key) or a GGUF file / HF dir.
    Generate {
        /// REF or PATH of the model.
        #[arg(long)]
        model: String,
        /// How each PROMPT is wrapped (game attacker prompt, defender prompt, or plain chat).
        #[arg(long, value_enum, default_value = "plain")]
        role: crate::generate::GenerateRole,
        /// Argmax decoding instead of the rollout's sampling settings.
        #[arg(long)]
        greedy: bool,
        #[arg(long)]
        max_new_tokens: Option<usize>,
        #[arg(long)]
        iterations: Option<u32>,
        /// Token ids and log-probs as JSON.
        #[arg(long)]
        json: bool,
        /// One or more prompts, run as one batch.
        #[arg(value_name = "PROMPT", required = true)]
        prompts: Vec<String>,
    },
    /// Remove artifacts no plan of the current spec reaches (with 1..=N iterations).
    Gc {
        #[arg(long)]
        dry_run: bool,
        /// Keep the N newest unreachable artifacts of each node; with --thin, also the full
        /// policies of the N newest iterations (at least 1).
        #[arg(long, default_value_t = 0)]
        keep_last: usize,
        /// Also thin the current run's older policies: delete the weights and optimizer state
        /// of every `update` but the newest --keep-last (digests stay, so keys hold; `run`
        /// rebuilds one when a stage needs it). Bounds the store to ≈ N policies.
        #[arg(long)]
        thin: bool,
        /// Keep what any run of up to this many iterations reaches (default: the spec's
        /// run.iterations), so a longer run sharing the store keeps its artifacts.
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Judge a file of (prompt, response) pairs; with label columns, score the judge.
    Judge {
        /// A backend (rules, keywords, probe, wildguard; options from the pipeline file) or
        /// a judge-fit REF (`judge-fit`, a key or key prefix).
        #[arg(long = "with", value_name = "REF|SPEC")]
        with: String,
        /// CSV, JSONL or Parquet with prompt/response columns and optional label columns
        /// prompt_harmful, refusal, response_harmful (true/false, 1/0, yes/no).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(long, default_value = "prompt")]
        prompt_column: String,
        #[arg(long, default_value = "response")]
        response_column: String,
        #[arg(long)]
        prompt_harmful_column: Option<String>,
        #[arg(long)]
        refusal_column: Option<String>,
        #[arg(long)]
        response_harmful_column: Option<String>,
        /// Column with the dataset label judges like `rules` read (default `seed_label`).
        #[arg(long)]
        seed_label_column: Option<String>,
        /// Seed label of every pair (overrides the column).
        #[arg(long, value_parser = ["harmful", "benign"])]
        seed_label: Option<String>,
        /// Judge every pair again instead of reading the store's verdict cache.
        #[arg(long)]
        no_cache: bool,
        /// Verdict rows printed (text output).
        #[arg(long, default_value_t = 10)]
        rows: usize,
        #[arg(long)]
        iterations: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Serve a policy (PATH or store REF) as an OpenAI-compatible completions server.
    Serve {
        /// GGUF file, HF directory, or a policy artifact REF (`base`, `update@3`, a key).
        #[arg(long, value_name = "REF|PATH")]
        model: String,
        #[arg(long, default_value = "127.0.0.1:8000")]
        bind: String,
        /// Model name reported in replies (default: the --model argument).
        #[arg(long)]
        name: Option<String>,
        /// Answer the first N requests with HTTP 503 (to test clients' retries).
        #[arg(long, default_value_t = 0)]
        fail_first: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long)]
        iterations: Option<u32>,
        /// Require `Authorization: Bearer TOKEN`, TOKEN read from this environment variable.
        #[arg(long, value_name = "NAME")]
        auth_token_env: Option<String>,
        /// Largest request body in bytes (larger: 413).
        #[arg(long, default_value_t = crate::judge::server::DEFAULT_MAX_BODY_BYTES)]
        max_body_bytes: usize,
        /// Most prompts in one request.
        #[arg(long, default_value_t = crate::judge::server::DEFAULT_MAX_PROMPTS)]
        max_prompts: usize,
        /// Largest `max_tokens` of a request (prompt + max_tokens must also fit the context).
        #[arg(long, default_value_t = 4096)]
        max_tokens: usize,
        /// Deadline for one request (receiving the body and generating), in seconds.
        #[arg(long, default_value_t = crate::judge::server::DEFAULT_REQUEST_TIMEOUT.as_secs_f64())]
        request_timeout_s: f64,
    },
}

fn print_json(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn load(global: &Global, iterations: Option<u32>) -> Result<(Spec, Plan, Store)> {
    let spec = Spec::load(&global.config)?;
    let plan = Plan::new(&spec, iterations);
    Ok((spec, plan, Store::at(&global.store)))
}

fn short(k: &str) -> &str {
    &k[..k.len().min(12)]
}

/// Run the CLI; returns the process exit code.
pub fn main_with(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    match cli.command {
        Command::Run { iterations, only, from, force, json } => {
            let (spec, plan, _) = load(g, iterations)?;
            let store = Store::open(&g.store)?;
            let engine = Engine::new(&spec, plan, store);
            let mut line = |r: &NodeReport| {
                if !json {
                    let rows = r.rows.map_or(String::new(), |n| format!("  rows {n}"));
                    let parts: String = r.parts.iter().map(|(k, s)| format!(" {k} {s:.1}s")).collect();
                    let parts = if parts.is_empty() { parts } else { format!("  ({})", parts.trim_start()) };
                    eprintln!("{:<5} {:<12} {}  {:>7.2}s{}{}", if r.outcome == Outcome::Hit { "hit" } else { "miss" }, r.node, r.key.short(), r.seconds, rows, parts);
                }
            };
            let summary = engine.run(&RunOptions { only, from, force }, &mut line)?;
            if json {
                print_json(&json!({"nodes": summary.nodes}))?;
            }
            if !json {
                let misses = summary.nodes.iter().filter(|r| r.outcome == Outcome::Miss).count();
                eprintln!("done: {} node(s), {misses} computed, {} cached", summary.nodes.len(), summary.nodes.len() - misses);
            }
            Ok(0)
        }
        Command::Plan { iterations, json } => {
            let (_, plan, _) = load(g, iterations)?;
            if json {
                let nodes: Vec<Value> = plan
                    .nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "name": n.name(), "stage": n.id.kind, "iteration": n.id.iteration,
                            "inputs": n.inputs.iter().map(|(r, p)| json!({"role": r, "node": p.to_string()})).collect::<Vec<_>>(),
                            "params": n.params,
                            "files": n.files.iter().map(|f| json!({"name": f.name, "sha256": f.sha256})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                print_json(&json!({"iterations": plan.iterations, "nodes": nodes}))?;
            } else {
                for n in &plan.nodes {
                    let ins: Vec<String> = n.inputs.iter().map(|(r, p)| format!("{r}={p}")).collect();
                    println!("{:<12} <- {}", n.name(), if ins.is_empty() { "sources".to_string() } else { ins.join(", ") });
                }
            }
            Ok(0)
        }
        Command::Status { iterations, json } => {
            let (spec, plan, store) = load(g, iterations)?;
            let engine = Engine::new(&spec, plan, store);
            let resolved = engine.resolve()?;
            if json {
                // {"nodes": [{"name", "stage", "iteration", "key"|null, "content_digest"|null, "state", "reason"|null}]}
                let nodes: Vec<Value> = resolved
                    .iter()
                    .map(|r| {
                        let node = engine.plan.get(&r.name).expect("resolved from the plan");
                        json!({
                            "name": r.name, "stage": node.id.kind, "iteration": node.id.iteration,
                            "key": r.key.as_ref().map(|k| k.to_string()),
                            "content_digest": r.artifact.as_ref().map(|a| a.manifest.content_digest.to_string()),
                            "state": r.state.name(), "reason": r.state.reason(),
                        })
                    })
                    .collect();
                print_json(&json!({"nodes": nodes}))?;
            } else {
                let mut out = std::io::stdout().lock();
                for r in &resolved {
                    let key = r.key.as_ref().map_or("-".to_string(), |k| k.short().to_string());
                    writeln!(out, "{:<12} {:<8} {:<12} {}", r.name, r.state.name(), key, r.state.reason().unwrap_or(""))?;
                }
            }
            Ok(0)
        }
        Command::Log { iterations, all, json } => {
            let (spec, plan, store) = load(g, iterations)?;
            let engine = Engine::new(&spec, plan, store);
            let rows = engine.log()?;
            // Headline columns: canonical names (src/verbs/mod.rs) matched by pattern.
            let gathered = crate::verbs::gather(&engine)?;
            let headline: std::collections::BTreeMap<u32, std::collections::BTreeMap<String, Value>> = gathered
                .metrics
                .iter()
                .map(|(i, m)| (*i, m.iter().filter(|(k, _)| crate::verbs::is_headline(k)).map(|(k, v)| (k.clone(), json!(v))).collect()))
                .collect();
            let use_headline = !all && headline.values().any(|m| !m.is_empty());
            // Paired change of every suite's rates from the first to the last evaluation
            // (same prompts: eval subsets are seeded by the run seed, not the iteration).
            let span = match (gathered.evals.iter().next(), gathered.evals.iter().next_back()) {
                (Some((i0, a0)), Some((i1, a1))) if i0 != i1 => Some((*i0, *i1, crate::verbs::eval_changes(a0, a1)?)),
                _ => None,
            };
            if json {
                // {"iterations": [{"iteration", "metrics": {stage.name: value}, "headline": {canonical name: number}}],
                //  "changes": null | {"from": i, "to": j, "suites": [eval::stats::SuiteChange]}}
                let v: Vec<Value> = rows.iter().map(|(i, m)| json!({"iteration": i, "metrics": m, "headline": headline.get(i).cloned().unwrap_or_default()})).collect();
                let changes = span.as_ref().map(|(i0, i1, c)| json!({"from": i0, "to": i1, "suites": c}));
                print_json(&json!({"iterations": v, "changes": changes}))?;
            } else {
                let rows = if use_headline { headline } else { rows };
                let mut cols: Vec<&String> = rows.values().flat_map(|m| m.keys()).collect();
                cols.sort();
                cols.dedup();
                // Headers: in-distribution suites (held-out slices of a training source) are
                // labelled, e.g. `refusal/advbench(in-dist)`.
                let headers: Vec<String> = cols
                    .iter()
                    .map(|c| match c.split_once('/') {
                        Some((_, suite)) if crate::eval::stats::in_distribution(suite) => format!("{c}(in-dist)"),
                        _ => c.to_string(),
                    })
                    .collect();
                let mut out = std::io::stdout().lock();
                write!(out, "{:<5}", "iter")?;
                for h in &headers {
                    write!(out, " {h:>w$}", w = h.len().max(6))?;
                }
                writeln!(out)?;
                for (i, m) in &rows {
                    write!(out, "{i:<5}")?;
                    for (c, h) in cols.iter().zip(&headers) {
                        let v = m.get(*c).map_or("-".to_string(), |v| match v {
                            Value::Number(n) => n.as_f64().filter(|f| f.fract() != 0.0).map_or(n.to_string(), |f| format!("{f:.4}")),
                            other => other.to_string(),
                        });
                        write!(out, " {v:>w$}", w = h.len().max(6))?;
                    }
                    writeln!(out)?;
                }
                if let Some((i0, i1, changes)) = &span {
                    writeln!(out, "\nchange eval@{i0} -> eval@{i1} on the same prompts:")?;
                    write!(out, "{}", crate::verbs::render_changes(changes))?;
                }
            }
            Ok(0)
        }
        Command::Report { out, iterations, json } => {
            let (spec, plan, store) = load(g, iterations)?;
            let engine = Engine::new(&spec, plan, store);
            let summary = crate::verbs::report::write(&engine, &out)?;
            if json {
                print_json(&serde_json::to_value(&summary)?)?;
            } else {
                eprintln!("wrote {} ({} iteration(s), eval at {:?}, {} example(s))", summary.path.display(), summary.iterations.len(), summary.evals, summary.examples);
            }
            Ok(0)
        }
        Command::Compare { runs, json } => {
            let loaded = crate::verbs::compare::load_runs(&runs, &g.store)?;
            if json {
                // {"runs": [RunMetrics]}, "metrics": [names]}
                print_json(&json!({"runs": loaded, "metrics": crate::verbs::compare::metric_names(&loaded)}))?;
            } else {
                print!("{}", crate::verbs::compare::render_table(&loaded));
            }
            Ok(0)
        }
        Command::Show { reference, rows, iterations, json } => {
            let (spec, plan, store) = load(g, iterations)?;
            let engine = Engine::new(&spec, plan, store);
            let a = engine.find(&reference)?;
            let mut previews = serde_json::Map::new();
            let mut text = String::new();
            for f in a.manifest.files.iter().filter(|f| f.name.ends_with(".parquet")) {
                let crate::schema::Preview { columns: cols, rows: data, total_rows: total } = crate::schema::preview(&a.dir.join(&f.name), rows).with_context(|| format!("read {}", f.name))?;
                let objs: Vec<Value> = data.iter().map(|r| Value::Object(cols.iter().cloned().zip(r.iter().map(|c| Value::String(c.clone()))).collect())).collect();
                text.push_str(&format!("\n{} ({total} rows; first {}):\n", f.name, data.len()));
                for o in &objs {
                    text.push_str(&format!("  {o}\n"));
                }
                previews.insert(f.name.clone(), json!({"columns": cols, "total_rows": total, "rows": objs}));
            }
            if json {
                print_json(&json!({"dir": a.dir, "manifest": a.manifest, "rows": previews}))?;
            } else {
                println!("{} {}/{}\n{}", a.manifest.node, a.manifest.stage, a.manifest.key, String::from_utf8_lossy(&a.manifest.to_bytes()));
                print!("{text}");
            }
            Ok(0)
        }
        Command::Lineage { reference, iterations, json } => {
            let (spec, plan, store) = load(g, iterations)?;
            let engine = Engine::new(&spec, plan, store);
            let a = engine.find(&reference)?;
            let tree = lineage(&engine.store, &a)?;
            if json {
                print_json(&tree)?;
            } else {
                print_tree(&tree, 0);
            }
            Ok(0)
        }
        Command::Explain { reference, iterations, json } => {
            let (spec, plan, store) = load(g, iterations)?;
            let engine = Engine::new(&spec, plan, store);
            let sentences = engine.explain_node(&reference)?;
            if json {
                print_json(&json!({"node": reference, "reasons": sentences}))?;
            } else {
                for s in sentences {
                    println!("{s}");
                }
            }
            Ok(0)
        }
        Command::Verify { reference, all, recompute, iterations, json } => {
            let (spec, plan, store) = load(g, iterations)?;
            let engine = Engine::new(&spec, plan, store);
            let targets: Vec<Artifact> = match (&reference, all) {
                (Some(r), false) => vec![engine.find(r)?],
                (None, true) => engine.store.scan()?,
                _ => bail!("verify takes a REF or --all"),
            };
            let mut bad = 0;
            let mut results = Vec::new();
            for a in &targets {
                let problems: Vec<String> = a.verify_all().iter().map(|e| e.to_string()).collect();
                let mut rec = Value::Null;
                if recompute && problems.is_empty() {
                    let cmp = engine.recompute(a)?;
                    let differ: Vec<&String> = cmp.iter().filter(|(_, ok)| !ok).map(|(f, _)| f).collect();
                    if !differ.is_empty() {
                        bad += 1;
                    }
                    rec = json!({"identical": differ.is_empty(), "differing_files": differ});
                }
                if !problems.is_empty() {
                    bad += 1;
                }
                if !json {
                    let status = if problems.is_empty() { "ok" } else { "CORRUPT" };
                    println!("{status:<8} {:<12} {}/{}", a.manifest.node, a.manifest.stage, a.manifest.key.short());
                    for p in &problems {
                        println!("    {p}");
                    }
                    if !rec.is_null() {
                        println!("    recompute: {}", if rec["identical"] == json!(true) { "identical bytes".to_string() } else { format!("DIFFERS in {}", rec["differing_files"]) });
                    }
                }
                results.push(json!({"node": a.manifest.node, "stage": a.manifest.stage, "key": a.manifest.key, "ok": problems.is_empty(), "problems": problems, "recompute": rec}));
            }
            // Directories named like artifacts that are not valid ones (a corrupt manifest, a
            // crash halfway through an old gc): `run` and `gc` repair them; verify lists them.
            let leftovers = if all { engine.store.leftovers()? } else { Vec::new() };
            for l in &leftovers {
                bad += 1;
                if !json {
                    println!("CORRUPT  {}\n    {}", l.dir.display(), l.reason);
                }
            }
            if json {
                print_json(&json!({"artifacts": results, "leftovers": leftovers.iter().map(|l| json!({"dir": l.dir, "problem": l.reason})).collect::<Vec<_>>()}))?;
            }
            Ok(if bad > 0 { 1 } else { 0 })
        }
        Command::Generate { model, role, greedy, max_new_tokens, iterations, json, prompts } => {
            let spec = Spec::load(&g.config)?;
            let out = crate::generate::generate(&spec, &g.store, iterations, &crate::generate::GenerateOptions { model, role, greedy, max_new_tokens, prompts })?;
            if json {
                print_json(&serde_json::to_value(&out)?)?;
            } else {
                // Model text may hold terminal control sequences: printed stripped (--json keeps it raw).
                crate::generate::write_plain(&mut std::io::stdout().lock(), &out)?;
            }
            Ok(0)
        }
        Command::Gc { dry_run, keep_last, thin, iterations, json } => {
            let (spec, plan, store) = load(g, iterations)?;
            let engine = Engine::new(&spec, plan, store);
            let report = if engine.store.root().exists() { engine.gc(engine.plan.iterations, keep_last, thin, dry_run)? } else { Default::default() };
            let (victims, thinned) = (&report.removed, &report.thinned);
            if json {
                let list = |v: &[Artifact]| v.iter().map(|a| json!({"node": a.manifest.node, "stage": a.manifest.stage, "key": a.manifest.key})).collect::<Vec<_>>();
                print_json(&json!({"dry_run": dry_run, "removed": list(victims), "thinned": list(thinned), "verdict_cache": report.verdict_cache}))?;
            } else {
                for a in victims {
                    println!("{} {:<12} {}/{}", if dry_run { "would remove" } else { "removed" }, a.manifest.node, a.manifest.stage, short(a.manifest.key.as_str()));
                }
                for a in thinned {
                    println!("{} {:<12} {}/{}", if dry_run { "would thin" } else { "thinned" }, a.manifest.node, a.manifest.stage, short(a.manifest.key.as_str()));
                }
                println!("{} artifact(s) {}, {} thinned", victims.len(), if dry_run { "would be removed" } else { "removed" }, thinned.len());
                let vc = &report.verdict_cache;
                if let Some(why) = &vc.skipped {
                    println!("verdict cache left alone: {why}");
                } else if let Some(s) = &vc.sweep {
                    let verb = if dry_run { "would remove" } else { "removed" };
                    println!("verdict cache: {verb} {} entr(ies) of judges no artifact names, {} corrupt, {} temp file(s) ({} bytes); kept {} of {} live judge(s)", s.removed, s.corrupt, s.temp_files, s.removed_bytes, s.kept, vc.live_judges);
                }
            }
            Ok(0)
        }
        Command::Judge { with, file, prompt_column, response_column, prompt_harmful_column, refusal_column, response_harmful_column, seed_label_column, seed_label, no_cache, rows, iterations, json } => {
            let spec = Spec::load(&g.config)?;
            let columns = crate::judge_verb::PairColumns { prompt: prompt_column, response: response_column, prompt_harmful: prompt_harmful_column, refusal: refusal_column, response_harmful: response_harmful_column, seed_label: seed_label_column };
            let opts = crate::judge_verb::JudgeFileOptions { with: crate::judge_verb::JudgeChoice::parse(&with), file, columns, seed_label: seed_label.map(|s| s == "harmful"), use_cache: !no_cache };
            let report = crate::judge_verb::judge_file(&spec, &g.store, iterations, &opts)?;
            if json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
                print!("{}", crate::judge_verb::render_text(&report, rows));
            }
            Ok(0)
        }
        Command::Serve { model, bind, name, fail_first, workers, iterations, auth_token_env, max_body_bytes, max_prompts, max_tokens, request_timeout_s } => {
            let spec = Spec::load(&g.config)?;
            crate::serve_verb::serve(&spec, &g.store, iterations, &crate::serve_verb::ServeOptions { model, bind, name, fail_first, workers, auth_token_env, max_body_bytes, max_prompts, max_tokens, request_timeout_s })?;
            Ok(0)
        }
    }
}

/// The artifact's ancestry as a tree, walking the DAG once: an artifact met a second time
/// (update@i reaches update@(i−1) through four inputs) is printed as a reference to its first
/// appearance (`"seen": true`) instead of again, so the output grows with the number of
/// artifacts, not with the number of paths. Each input record's digest is checked against
/// the artifact now in the store, so a `run --force` replacement with other bytes shows as
/// `"digest_mismatch"` instead of passing for the original.
fn lineage(store: &Store, a: &Artifact) -> Result<Value> {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    seen.insert((a.manifest.stage.clone(), a.manifest.key.to_string()));
    lineage_walk(store, a, &mut seen)
}

fn lineage_walk(store: &Store, a: &Artifact, seen: &mut HashSet<(String, String)>) -> Result<Value> {
    let mut inputs = Vec::new();
    for rec in &a.manifest.inputs {
        let id = (rec.stage.clone(), rec.key.to_string());
        let base = json!({"node": rec.node, "role": rec.role, "stage": rec.stage, "key": rec.key});
        let child = match store.load(&rec.stage, &rec.key)? {
            None => {
                let mut v = base;
                v["missing"] = json!(true);
                v
            }
            Some(c) if c.manifest.content_digest != rec.digest => {
                let mut v = base;
                v["digest_mismatch"] = json!({"recorded": rec.digest, "in_store": c.manifest.content_digest});
                v
            }
            Some(_) if seen.contains(&id) => {
                let mut v = base;
                v["seen"] = json!(true);
                v
            }
            Some(c) => {
                seen.insert(id);
                let mut v = lineage_walk(store, &c, seen)?;
                v["role"] = json!(rec.role);
                v
            }
        };
        inputs.push(child);
    }
    let sources: Vec<Value> = a.manifest.components.files.iter().map(|f| json!({"name": f.name, "sha256": f.sha256})).collect();
    Ok(json!({"node": a.manifest.node, "stage": a.manifest.stage, "key": a.manifest.key, "content_digest": a.manifest.content_digest, "inputs": inputs, "sources": sources}))
}

fn print_tree(v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    let role = v.get("role").and_then(Value::as_str).map_or(String::new(), |r| format!("{r}: "));
    let key = v.get("key").and_then(Value::as_str).map_or("", short);
    let note = if v.get("missing").is_some() {
        "  (not in store)"
    } else if v.get("digest_mismatch").is_some() {
        "  (REPLACED: the store holds other bytes under this key than the ones this artifact was built from)"
    } else if v.get("seen").is_some() {
        "  (see above)"
    } else {
        ""
    };
    println!("{pad}{role}{} {key}{note}", v["node"].as_str().unwrap_or("?"));
    if let Some(srcs) = v.get("sources").and_then(Value::as_array) {
        for s in srcs {
            println!("{pad}  source {} sha256 {}", s["name"].as_str().unwrap_or("?"), s["sha256"].as_str().map_or("", short));
        }
    }
    if let Some(ins) = v.get("inputs").and_then(Value::as_array) {
        for i in ins {
            print_tree(i, depth + 1);
        }
    }
}
