//! The command line (clap): parses the verbs, loads the spec, builds the plan and engine,
//! calls the verb's function in src/verbs/ and prints its result. Called by src/main.rs.
//! Every data verb has `--json` with a stable shape: the `Serialize` struct its function
//! returns (documented there, e.g. `verbs::status::StatusOutput`); without `--json` the
//! verb's own text rendering is printed.
use std::io::{stderr, stdout, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::Value;

use crate::engine::{Engine, NodeReport, RunOptions};
use crate::executor::Executor;
#[cfg(feature = "compute")]
use crate::executor::Job;
use crate::plan::Plan;
use crate::spec::Spec;
use crate::store::Store;
use crate::verbs::{compare, explain, gc, lineage, log, plan, report, run, show, status, verify};
#[cfg(feature = "compute")]
use crate::verbs::{generate, judge, serve};

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
        /// Run every stage inside this process instead of one child process per node
        /// (`exec JOB`, src/executor.rs): for debuggers and profilers.
        #[arg(long)]
        in_process: bool,
        /// Compute up to N independent ready nodes at once (e.g. eval@k beside rollout@k+1),
        /// each in its own process with `run.threads` threads; artifacts are the same bytes as
        /// with 1.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Where each node is computed: `local` (a child process here) or `slurm` (a job on
        /// the cluster, `slurm:` in the pipeline file); default: `run.executor`.
        #[arg(long, value_enum)]
        executor: Option<crate::spec::ExecutorKind>,
        #[arg(long)]
        json: bool,
    },
    /// Run one node's job file (written by `run` into the store's `.tmp`) and publish the
    /// artifact: what `run` starts once per node; a cluster job runs the same command.
    #[command(hide = true)]
    Exec {
        /// The job file (JSON, docs/executor.md).
        job: PathBuf,
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
        role: GenerateRole,
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
    /// Serve a policy (PATH or store REF): OpenAI text completions, SGLang `/generate` and
    /// vLLM token-id completions, with both engines' weight updates from disk.
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
        #[arg(long, default_value_t = crate::serve::DEFAULT_MAX_BODY_BYTES)]
        max_body_bytes: usize,
        /// Most prompts in one request.
        #[arg(long, default_value_t = crate::serve::DEFAULT_MAX_PROMPTS)]
        max_prompts: usize,
        /// Largest `max_tokens` of a request (prompt + max_tokens must also fit the context).
        #[arg(long, default_value_t = 4096)]
        max_tokens: usize,
        /// Deadline for computing one request once received (504 past it), in seconds.
        #[arg(long, default_value_t = crate::serve::DEFAULT_REQUEST_TIMEOUT.as_secs_f64())]
        request_timeout_s: f64,
        /// Most connections open at once (one more: 503 and closed).
        #[arg(long, default_value_t = crate::serve::http1::Limits::default().max_connections)]
        max_connections: usize,
        /// Seconds within which a connection must send a request's head (else 408 and closed;
        /// the body is due 60 s after it, an idle keep-alive connection is closed after 30 s).
        #[arg(long, default_value_t = crate::serve::http1::Limits::default().header_timeout.as_secs_f64())]
        header_timeout_s: f64,
        /// Weight version reported before any weight update (default: `default`, as SGLang).
        #[arg(long, value_name = "V")]
        weight_version: Option<String>,
        /// Prompts per model call (the request deadline is checked between calls).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Admit prompt + new tokens up to N instead of the model config's context (as vLLM's
        /// `--max-model-len`): local generation has no such limit, so a server that must give
        /// the same rows as local generation needs it for prompts past the context.
        #[arg(long, value_name = "N")]
        max_model_len: Option<usize>,
        /// Write every request received to DIR as `<n>.json` (method, route, body): what a
        /// client sent, for checking against the engines' own request validation.
        #[arg(long, value_name = "DIR")]
        record_requests: Option<std::path::PathBuf>,
    },
}

/// How `generate` wraps each PROMPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerateRole {
    /// PROMPT is a harmful seed; the attacker prompt of the game asks to revise it (CoT per
    /// `rollout.cot`).
    Attacker,
    /// PROMPT is an attack; the defender prompt of the game (CoT template when `rollout.cot`).
    Defender,
    /// PROMPT is one user message in the model's chat template.
    Plain,
}

fn print_json(v: &Value) -> Result<()> {
    let mut out = stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Print a verb's result: its JSON shape on stdout with `--json`, else its text rendering
/// on `to` (stdout, or stderr for `run` and `report`).
fn print<T: Serialize, W: Write>(json: bool, out: &T, mut to: W, text: impl FnOnce(&T, &mut W) -> std::io::Result<()>) -> Result<()> {
    if json {
        print_json(&serde_json::to_value(out)?)
    } else {
        Ok(text(out, &mut to)?)
    }
}

fn load(global: &Global, iterations: Option<u32>) -> Result<(Spec, Plan, Store)> {
    let spec = Spec::load(&global.config)?;
    let plan = Plan::new(&spec, iterations);
    Ok((spec, plan, Store::at(&global.store)))
}

/// Load the spec and plan and call `verb` with the engine over `--store`.
fn with_engine<T>(global: &Global, iterations: Option<u32>, verb: impl FnOnce(&Engine<'_>) -> Result<T>) -> Result<T> {
    let (spec, plan, store) = load(global, iterations)?;
    verb(&Engine::new(&spec, plan, store))
}

/// The whole program of both binaries (`self-redteam`, `self-redteam-compute`): logging,
/// Ctrl-C handling, then [`main_with`]. Errors print once here with their whole chain.
pub fn run_main() -> ! {
    use std::sync::atomic::Ordering;
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.global.log_level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    // First Ctrl-C: stop after the current node (or at the stage's next check), keeping
    // everything finished. Second Ctrl-C: cancel this engine's cluster jobs and exit at once;
    // the store stays consistent because nothing is visible before its atomic rename.
    let _ = ctrlc::set_handler(|| {
        if crate::engine::CANCEL.swap(true, Ordering::SeqCst) {
            crate::executor::cluster::cancel_all_now();
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing cleanly (Ctrl-C again to quit now)");
    });
    // A typo in the decode-kernel switch must not silently fall back to the default kernel.
    #[cfg(feature = "compute")]
    if let Err(e) = crate::model::kernels::isa_cap_from_env() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let code = match main_with(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Whether a command needs the model runtime: stage execution in this process (`exec`,
/// `run --in-process`, `verify --recompute`) and the model verbs (`generate`, `judge`, `serve`).
/// The core binary hands these to the compute binary (src/executor.rs, [`crate::executor::delegate`]).
pub fn needs_compute(command: &Command) -> bool {
    matches!(
        command,
        Command::Exec { .. }
            | Command::Generate { .. }
            | Command::Judge { .. }
            | Command::Serve { .. }
            | Command::Run { in_process: true, .. }
            | Command::Verify { recompute: true, .. }
    )
}

/// Run the CLI; returns the process exit code.
pub fn main_with(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    if !cfg!(feature = "compute") && needs_compute(&cli.command) {
        return crate::executor::delegate();
    }
    match cli.command {
        Command::Run { iterations, only, from, force, in_process, jobs, executor, json } => {
            let (spec, plan, _) = load(g, iterations)?;
            let mut engine = Engine::new(&spec, plan, Store::open(&g.store)?);
            let kind = executor.unwrap_or(spec.raw.run.executor);
            if in_process && kind == crate::spec::ExecutorKind::Slurm {
                anyhow::bail!("run --in-process computes every node in this process; it cannot be combined with the slurm executor");
            }
            if !in_process {
                let program = crate::executor::compute_program()?;
                engine.executor = match kind {
                    crate::spec::ExecutorKind::Local => Executor::Process { program },
                    crate::spec::ExecutorKind::Slurm => {
                        let s = &spec.raw.slurm;
                        // The program and the store as the jobs see them: absolute paths.
                        let program = std::path::absolute(&program).unwrap_or(program);
                        Executor::Cluster {
                            scheduler: std::sync::Arc::new(crate::executor::slurm::Slurm::new(s)),
                            options: crate::executor::cluster::ClusterOptions {
                                program,
                                poll: std::time::Duration::from_secs(u64::from(s.poll_s)),
                                grace: std::time::Duration::from_secs(u64::from(s.grace_s)),
                            },
                        }
                    }
                };
            }
            // Text: one line per node on stderr as it ends, then the count.
            let out = run::run(&engine, &RunOptions { only, from, force, jobs }, &mut |r: &NodeReport| {
                if !json {
                    let _ = run::write_node_line(&mut stderr().lock(), r);
                }
            })?;
            print(json, &out, stderr(), run::RunOutput::write_text)?;
        }
        #[cfg(feature = "compute")]
        Command::Exec { job } => {
            let job = Job::read(&job)?;
            crate::executor::exit_with_parent();
            let spec = Spec::validate(job.spec.clone(), &job.config_file)?;
            let plan = Plan::new(&spec, Some(job.iterations));
            let engine = Engine::new(&spec, plan, Store::open(&job.store)?);
            engine.run_job(&job)?;
        }
        Command::Plan { iterations, json } => print(json, &plan::plan(&load(g, iterations)?.1), stdout(), plan::PlanOutput::write_text)?,
        Command::Status { iterations, json } => print(json, &with_engine(g, iterations, status::status)?, stdout(), status::StatusOutput::write_text)?,
        Command::Log { iterations, all, json } => print(json, &with_engine(g, iterations, log::log)?, stdout(), |o, w| o.write_text(all, w))?,
        Command::Report { out, iterations, json } => {
            print(json, &with_engine(g, iterations, |e| report::write(e, &out))?, stderr(), report::ReportSummary::write_text)?
        }
        Command::Compare { runs, json } => print(json, &compare::compare(&runs, &g.store)?, stdout(), compare::CompareOutput::write_text)?,
        Command::Show { reference, rows, iterations, json } => {
            print(json, &with_engine(g, iterations, |e| show::show(e, &reference, rows))?, stdout(), show::ShowOutput::write_text)?
        }
        Command::Lineage { reference, iterations, json } => {
            print(json, &with_engine(g, iterations, |e| lineage::lineage_of(e, &reference))?, stdout(), lineage::LineageNode::write_text)?
        }
        Command::Explain { reference, iterations, json } => {
            print(json, &with_engine(g, iterations, |e| explain::explain(e, &reference))?, stdout(), explain::ExplainOutput::write_text)?
        }
        Command::Verify { reference, all, recompute, iterations, json } => {
            // Text: each artifact as it is checked (recomputing takes as long as the node), then the leftovers.
            let mut each = |c: &verify::ArtifactCheck| {
                if !json {
                    let _ = c.write_text(&mut stdout().lock());
                }
            };
            let out = with_engine(g, iterations, |e| verify::verify(e, reference.as_deref(), all, recompute, &mut each))?;
            print(json, &out, stdout(), verify::VerifyOutput::write_leftovers_text)?;
            return Ok(if out.bad() > 0 { 1 } else { 0 });
        }
        #[cfg(feature = "compute")]
        Command::Generate { model, role, greedy, max_new_tokens, iterations, json, prompts } => {
            let out =
                generate::generate(&Spec::load(&g.config)?, &g.store, iterations, &generate::GenerateOptions { model, role, greedy, max_new_tokens, prompts })?;
            // Model text may hold terminal control sequences: printed stripped (--json keeps it raw).
            print(json, &out, stdout(), |o, w| generate::write_plain(w, o))?;
        }
        Command::Gc { dry_run, keep_last, thin, iterations, json } => {
            print(json, &with_engine(g, iterations, |e| gc::gc(e, keep_last, thin, dry_run))?, stdout(), gc::GcOutput::write_text)?
        }
        #[cfg(feature = "compute")]
        Command::Judge {
            with,
            file,
            prompt_column,
            response_column,
            prompt_harmful_column,
            refusal_column,
            response_harmful_column,
            seed_label_column,
            seed_label,
            no_cache,
            rows,
            iterations,
            json,
        } => {
            let columns = judge::PairColumns {
                prompt: prompt_column,
                response: response_column,
                prompt_harmful: prompt_harmful_column,
                refusal: refusal_column,
                response_harmful: response_harmful_column,
                seed_label: seed_label_column,
            };
            let opts = judge::JudgeFileOptions {
                with: judge::JudgeChoice::parse(&with),
                file,
                columns,
                seed_label: seed_label.map(|s| s == "harmful"),
                use_cache: !no_cache,
            };
            print(json, &judge::judge_file(&Spec::load(&g.config)?, &g.store, iterations, &opts)?, stdout(), |r, w| {
                write!(w, "{}", judge::render_text(r, rows))
            })?;
        }
        #[cfg(feature = "compute")]
        Command::Serve {
            model,
            bind,
            name,
            fail_first,
            workers,
            iterations,
            auth_token_env,
            max_body_bytes,
            max_prompts,
            max_tokens,
            request_timeout_s,
            max_connections,
            header_timeout_s,
            weight_version,
            batch,
            max_model_len,
            record_requests,
        } => {
            let opts = serve::ServeOptions {
                model,
                bind,
                name,
                fail_first,
                workers,
                auth_token_env,
                max_body_bytes,
                max_prompts,
                max_tokens,
                request_timeout_s,
                max_connections,
                header_timeout_s,
                weight_version,
                batch,
                max_model_len,
                record_requests,
            };
            serve::serve(&Spec::load(&g.config)?, &g.store, iterations, &opts)?;
        }
        #[cfg(not(feature = "compute"))]
        Command::Exec { .. } | Command::Generate { .. } | Command::Judge { .. } | Command::Serve { .. } => return crate::executor::delegate(),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` without `--bind` listens on loopback only: the weight-update routes load any
    /// path the process can read, so exposing it must be a choice (issue 10).
    #[test]
    fn serve_binds_loopback_by_default() {
        let cli = Cli::try_parse_from(["self-redteam", "serve", "--model", "base"]).expect("parses");
        let Command::Serve { bind, .. } = cli.command else { panic!("not serve: {:?}", cli.command) };
        let addr: std::net::SocketAddr = bind.parse().expect("an IP:port");
        assert!(addr.ip().is_loopback(), "default bind {bind}");
    }
}
