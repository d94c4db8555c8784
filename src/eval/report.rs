//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no external
//! assets) with line plots of metrics over iterations, the judge's held-out accuracy and
//! example games per outcome with their artifact keys. Called by the `report` verb and
//! the end of `run`. All text from users, models and files is HTML-escaped.
//!
//! Rates are drawn with their 95% Wilson interval as a shaded band (from the eval
//! manifest's `intervals`); the legend sits under the plot, one entry per line, so no
//! label is cut off however long or many; in-distribution suites are labelled.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::judge::metrics::BinaryMetrics;

/// Metrics of one iteration, keyed like `reward/attacker`, `asr/harmbench`,
/// `refusal/strongreject`, `over_refusal/rho_benign`, `diversity/sbert`, `kl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationMetrics {
    pub iteration: u32,
    pub metrics: BTreeMap<String, f64>,
    /// 95% intervals (lo, hi) of the metrics that are rates, by the same key.
    #[serde(default)]
    pub intervals: BTreeMap<String, (f64, f64)>,
}

/// One plot: every metric whose key starts with `key_prefix` is one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlotSpec {
    pub title: String,
    pub key_prefix: String,
}

impl PlotSpec {
    pub fn new(title: &str, key_prefix: &str) -> Self {
        Self { title: title.into(), key_prefix: key_prefix.into() }
    }
}

/// The report's standard plots (the metric key convention of the stages).
pub fn default_plots() -> Vec<PlotSpec> {
    vec![
        PlotSpec::new("Average reward per role", "reward/"),
        PlotSpec::new("Attack success rate per suite", "asr/"),
        PlotSpec::new("Refusal rate on harmful prompts per suite", "refusal/"),
        PlotSpec::new("Over-refusal (refusal on benign prompts)", "over_refusal/"),
        PlotSpec::new("Diversity (1 - SBERT similarity, 1 - Self-BLEU)", "diversity/"),
        PlotSpec::new("KL to the reference policy", "kl"),
    ]
}

/// Held-out accuracy of the judge, one row per head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeAccuracy {
    pub judge: String,
    pub judge_key: String,
    pub heads: Vec<(String, BinaryMetrics)>,
}

impl JudgeAccuracy {
    /// The probe's held-out metrics, one row per trained head.
    pub fn from_probe_report(judge: &str, judge_key: &str, report: &crate::judge::probe::ProbeReport) -> Self {
        Self { judge: judge.into(), judge_key: judge_key.into(), heads: report.heads.iter().map(|h| (h.head.name().to_string(), h.held_out)).collect() }
    }
}

/// One example game, shown under its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleGame {
    pub outcome: String,
    /// The artifact holding the game, e.g. `judge/3f2a…`, and the row in it.
    pub artifact_key: String,
    pub row: Option<u64>,
    pub prompt: String,
    pub response: String,
    pub verdict: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    pub title: String,
    pub iterations: Vec<IterationMetrics>,
    pub plots: Vec<PlotSpec>,
    pub judge: Option<JudgeAccuracy>,
    pub examples: Vec<ExampleGame>,
    /// Free-text notes (e.g. which sets stand in for benchmarks not available offline).
    pub notes: Vec<String>,
}

/// Escape text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const W: f64 = 640.0;
const H: f64 = 260.0;
const ML: f64 = 56.0;
const MR: f64 = 16.0;
/// Height of one legend line under a plot.
const LEGEND_LINE: f64 = 16.0;
const MT: f64 = 16.0;
const MB: f64 = 32.0;

/// One point of a series: iteration, value and (for rates) its 95% interval.
#[derive(Debug, Clone, Copy)]
struct Point {
    x: f64,
    y: f64,
    band: Option<(f64, f64)>,
}

/// Series of one plot: metric key → points for the iterations that have it.
fn series(iterations: &[IterationMetrics], prefix: &str) -> BTreeMap<String, Vec<Point>> {
    let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let mut its: Vec<&IterationMetrics> = iterations.iter().collect();
    its.sort_by_key(|m| m.iteration);
    for it in its {
        for (k, v) in &it.metrics {
            if k.starts_with(prefix) && v.is_finite() {
                let band = it.intervals.get(k).copied().filter(|(lo, hi)| lo.is_finite() && hi.is_finite());
                out.entry(k.clone()).or_default().push(Point { x: f64::from(it.iteration), y: *v, band });
            }
        }
    }
    out
}

/// A series' legend label: in-distribution suites (held-out slices of a training source)
/// are marked.
fn legend_label(key: &str) -> String {
    match key.split_once('/') {
        Some((_, suite)) if crate::eval::stats::in_distribution(suite) => format!("{key} (in-distribution)"),
        _ => key.to_string(),
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn svg_plot(spec: &PlotSpec, iterations: &[IterationMetrics]) -> String {
    let data = series(iterations, &spec.key_prefix);
    let mut s = String::new();
    let total_h = H + LEGEND_LINE * data.len() as f64;
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" viewBox="0 0 {W} {total_h}" role="img" aria-label="{}">"#,
        escape_html(&spec.title)
    );
    if data.is_empty() {
        let _ = write!(s, r#"<text x="{}" y="{}" class="nodata">no data</text></svg>"#, W / 2.0 - 24.0, H / 2.0);
        return s;
    }
    let pts = data.values().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts {
        let (lo, hi) = p.band.unwrap_or((p.y, p.y));
        x0 = x0.min(p.x);
        x1 = x1.max(p.x);
        y0 = y0.min(p.y).min(lo);
        y1 = y1.max(p.y).max(hi);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.1 };
        y0 -= pad;
        y1 += pad;
    }
    let px = |x: f64| ML + (x - x0) / (x1 - x0) * (W - ML - MR);
    let py = |y: f64| MT + (y1 - y) / (y1 - y0) * (H - MT - MB);
    // Axes and ticks (5 on y, first/last iteration on x).
    let _ = write!(s, r#"<line x1="{ML}" y1="{}" x2="{}" y2="{}" class="axis"/>"#, H - MB, W - MR, H - MB);
    let _ = write!(s, r#"<line x1="{ML}" y1="{MT}" x2="{ML}" y2="{}" class="axis"/>"#, H - MB);
    for t in 0..=4 {
        let y = y0 + (y1 - y0) * f64::from(t) / 4.0;
        let _ = write!(s, r#"<text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#, ML - 4.0, py(y) + 4.0, fmt_num(y));
    }
    for x in [x0, x1] {
        let _ = write!(s, r#"<text x="{:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#, px(x), H - MB + 16.0, fmt_num(x));
    }
    let _ = write!(s, r#"<text x="{:.1}" y="{}" class="tick" text-anchor="middle">iteration</text>"#, (ML + W - MR) / 2.0, H - 2.0);
    for (i, (key, points)) in data.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // The 95% interval band: upper ends left to right, lower ends back.
        if points.iter().all(|p| p.band.is_some()) {
            let mut band: Vec<String> = points.iter().map(|p| format!("{:.1},{:.1}", px(p.x), py(p.band.map_or(p.y, |b| b.1)))).collect();
            band.extend(points.iter().rev().map(|p| format!("{:.1},{:.1}", px(p.x), py(p.band.map_or(p.y, |b| b.0)))));
            let _ = write!(
                s,
                r#"<polygon class="band" data-key="{}" fill="{color}" fill-opacity="0.12" stroke="{color}" stroke-opacity="0.35" stroke-dasharray="3,3" points="{}"/>"#,
                escape_html(key),
                band.join(" ")
            );
        }
        let coords: Vec<String> = points.iter().map(|p| format!("{:.1},{:.1}", px(p.x), py(p.y))).collect();
        let _ = write!(
            s,
            r#"<polyline class="series" data-key="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            escape_html(key),
            coords.join(" ")
        );
        for p in points {
            let band = p.band.map(|(lo, hi)| format!(" [{lo:.3}, {hi:.3}]")).unwrap_or_default();
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"><title>{} @ {}: {}{band}</title></circle>"#,
                px(p.x),
                py(p.y),
                escape_html(key),
                p.x,
                p.y
            );
        }
        // Legend under the plot, one line per series (never clipped at the right edge).
        let ly = H + LEGEND_LINE * i as f64 + 4.0;
        let _ = write!(s, r#"<line x1="{ML}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/>"#, ML + 18.0);
        let band_note = if points.iter().any(|p| p.band.is_some()) { " (band: 95% Wilson interval)" } else { "" };
        let _ = write!(s, r#"<text x="{}" y="{}" class="legend">{}{band_note}</text>"#, ML + 24.0, ly + 4.0, escape_html(&legend_label(key)));
    }
    s.push_str("</svg>");
    s
}

/// Render the whole report as one HTML document.
pub fn render_report(input: &ReportInput) -> String {
    let mut h = String::new();
    let title = escape_html(&input.title);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>\
body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}\
th:first-child,td:first-child{{text-align:left}}.axis{{stroke:#444}}.tick,.legend,.nodata{{font-size:11px;fill:#333}}\
pre{{white-space:pre-wrap;background:#f6f6f6;padding:.5em;max-height:16em;overflow:auto}}code{{font-size:.9em}}\
</style></head><body>\n<h1>{title}</h1>\n"
    );
    for n in &input.notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", escape_html(n));
    }
    h.push_str("<h2>Metrics over iterations</h2>\n");
    for p in &input.plots {
        let _ = writeln!(h, "<figure><figcaption>{}</figcaption>{}</figure>", escape_html(&p.title), svg_plot(p, &input.iterations));
    }
    h.push_str("<h2>Judge held-out accuracy</h2>\n");
    match &input.judge {
        None => h.push_str("<p>No held-out accuracy recorded for this judge.</p>\n"),
        Some(j) => {
            let _ = writeln!(h, "<p>Judge <b>{}</b>, key <code>{}</code></p>", escape_html(&j.judge), escape_html(&j.judge_key));
            h.push_str("<table><tr><th>head</th><th>accuracy</th><th>precision</th><th>recall</th><th>F1</th><th>n</th></tr>\n");
            for (head, m) in &j.heads {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                    escape_html(head),
                    m.accuracy,
                    m.precision,
                    m.recall,
                    m.f1,
                    m.n
                );
            }
            h.push_str("</table>\n");
        }
    }
    h.push_str("<h2>Example games per outcome</h2>\n");
    let mut by_outcome: BTreeMap<&str, Vec<&ExampleGame>> = BTreeMap::new();
    for e in &input.examples {
        by_outcome.entry(e.outcome.as_str()).or_default().push(e);
    }
    if by_outcome.is_empty() {
        h.push_str("<p>No examples.</p>\n");
    }
    for (outcome, games) in by_outcome {
        let _ = writeln!(h, "<h3>{}</h3>", escape_html(outcome));
        for g in games {
            let row = g.row.map(|r| format!(" row {r}")).unwrap_or_default();
            let _ = writeln!(
                h,
                "<div class=\"game\"><p>artifact <code>{}</code>{}; verdict: {}</p><p>prompt</p><pre>{}</pre><p>response</p><pre>{}</pre></div>",
                escape_html(&g.artifact_key),
                escape_html(&row),
                escape_html(&g.verdict),
                escape_html(&g.prompt),
                escape_html(&g.response)
            );
        }
    }
    h.push_str("</body></html>\n");
    h
}

/// Write the report atomically (temp file + rename) to `path`.
pub fn write_report(input: &ReportInput, path: &std::path::Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, render_report(input).as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
