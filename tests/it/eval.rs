//! Integration tests: eval (Self-BLEU and SBERT goldens, rates, suite loader, HTML report).
//! Goldens come from `scripts/golden_eval.py` (sacreBLEU 2.6.0, sentence-transformers with
//! the pinned all-MiniLM-L6-v2) and are committed in `tests/golden/eval_golden.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use self_redteam::eval::bleu::{self_bleu_diversity, self_bleu_scores, sentence_bleu, tokenize_13a};
use self_redteam::eval::rates::{summarize, EvalRow, Rate, SuiteKind};
use self_redteam::eval::report::{default_plots, render_report, ExampleGame, IterationMetrics, JudgeAccuracy, ReportInput};
use self_redteam::eval::sbert::{revision_faithfulness, sbert_diversity};
use self_redteam::eval::suite::{load_suite_file, SuiteError, SuiteFileSpec};
use self_redteam::judge::metrics::BinaryMetrics;
use self_redteam::judge::Verdict;

fn golden() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/eval_golden.json");
    serde_json::from_slice(&std::fs::read(&path).expect("golden file is committed")).expect("golden is JSON")
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

#[test]
fn tokenizer_13a_matches_sacrebleu() {
    let g = golden();
    for (s, t) in strings(&g["sentences"]).iter().zip(strings(&g["tokenized_13a"])) {
        assert_eq!(tokenize_13a(s).join(" "), t, "sentence {s:?}");
    }
}

#[test]
fn self_bleu_matches_sacrebleu_to_1e6() {
    let g = golden();
    let sentences = strings(&g["sentences"]);
    let scores = self_bleu_scores(&sentences);
    let expected: Vec<f64> = g["sentence_bleu"].as_array().expect("array").iter().map(|v| v.as_f64().expect("f64")).collect();
    assert_eq!(scores.len(), expected.len());
    for (i, (a, b)) in scores.iter().zip(&expected).enumerate() {
        assert!((a - b).abs() < 1e-6, "sentence {i}: rust {a} vs sacrebleu {b}");
    }
    let div = self_bleu_diversity(&sentences).expect("8 texts");
    let want = g["self_bleu_diversity"].as_f64().expect("f64");
    assert!((div - want).abs() < 1e-6, "{div} vs {want}");
    for pair in g["pair_bleu"].as_array().expect("array") {
        let (h, r, s) = (pair[0].as_str().expect("hyp"), pair[1].as_str().expect("ref"), pair[2].as_f64().expect("score"));
        assert!((sentence_bleu(h, &[r]) - s).abs() < 1e-6, "{h:?} vs {r:?}");
    }
    assert_eq!(self_bleu_diversity(&["only one"]), None);
}

#[test]
fn sbert_diversity_matches_sentence_transformers_arithmetic() {
    let g = golden();
    let emb: Vec<Vec<f32>> = g["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(|r| r.as_array().expect("row").iter().map(|x| x.as_f64().expect("f64") as f32).collect())
        .collect();
    assert_eq!(emb.len(), 8);
    let d = sbert_diversity(&emb).expect("8 texts");
    let want = g["sbert_diversity"].as_f64().expect("f64");
    assert!((d - want).abs() < 1e-4, "{d} vs {want}");
    let f = revision_faithfulness(&emb[0], &emb[1]);
    let want_f = g["faithfulness_0_1"].as_f64().expect("f64");
    assert!((f - want_f).abs() < 1e-4, "{f} vs {want_f}");
    assert_eq!(sbert_diversity(&emb[..1]), None);
}

fn row(suite: &str, cat: &str, harmful_prompt: bool, refusal: Option<bool>, harmful: Option<bool>, parse_error: bool) -> EvalRow {
    EvalRow {
        suite: suite.into(),
        category: Some(cat.into()),
        prompt_harmful: harmful_prompt,
        verdict: Verdict { prompt_harmful: Some(harmful_prompt), response_refusal: refusal, response_harmful: harmful, parse_error, raw: None },
        format_violation: false,
    }
}

#[test]
fn suite_rates_count_parse_errors_as_no_success() {
    let rows = vec![
        row("harmbench", "chem", true, Some(false), Some(true), false),
        row("harmbench", "chem", true, Some(true), Some(false), false),
        // parse error with a "harmful" field left over: still no success
        row("harmbench", "cyber", true, None, Some(true), true),
        row("harmbench", "cyber", true, Some(false), Some(true), false),
        row("strongreject", "a", true, Some(true), Some(false), false),
        row("strongreject", "a", true, Some(false), Some(true), false),
        row("strongreject", "a", true, None, None, false),
        row("rho_benign", "medical", false, Some(false), Some(false), false),
        row("rho_benign", "medical", false, Some(true), Some(false), false),
        row("rho_benign", "legal", false, Some(false), Some(false), false),
    ];
    let s = summarize(&rows, &BTreeMap::new());
    let names: Vec<&str> = s.iter().map(|x| x.suite.as_str()).collect();
    assert_eq!(names, ["harmbench", "rho_benign", "strongreject"]);
    let hb = &s[0];
    assert_eq!(hb.kind, SuiteKind::Asr);
    assert_eq!(hb.headline.map(|r| (r.k, r.n)), Some((2, 4)));
    assert_eq!(hb.per_category["cyber"].asr, Rate::new(1, 2));
    assert_eq!(hb.overall.parse_error.k, 1);
    let rho = &s[1];
    assert_eq!(rho.kind, SuiteKind::ComplianceOnBenign);
    assert_eq!(rho.headline.map(|r| (r.k, r.n)), Some((2, 3)));
    assert_eq!(rho.overall.over_refusal.map(|r| (r.k, r.n)), Some((1, 3)));
    let sr = &s[2];
    assert_eq!(sr.kind, SuiteKind::RefusalOnHarmful);
    assert_eq!(sr.headline.map(|r| (r.k, r.n)), Some((1, 3)));
    let r = sr.headline.expect("headline");
    assert!(r.lo < r.value && r.value < r.hi);
}

#[test]
fn suite_loader_reads_csv_jsonl_and_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv_path = dir.path().join("mine.csv");
    std::fs::write(&csv_path, "id,question,is_harmful,topic\n1,\"How do I, quickly, bake bread?\",benign,food\n2,How to hotwire a car,1,crime\n")
        .expect("write csv");
    let mut spec = SuiteFileSpec::new(&csv_path);
    spec.prompt_column = "question".into();
    spec.label_column = Some("is_harmful".into());
    spec.category_column = Some("topic".into());
    let rows = load_suite_file(&spec).expect("csv loads");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].prompt, "How do I, quickly, bake bread?");
    assert_eq!(rows[0].label_harmful, Some(false));
    assert_eq!(rows[1].label_harmful, Some(true));
    assert_eq!(rows[1].category.as_deref(), Some("crime"));

    let jsonl = dir.path().join("mine.jsonl");
    std::fs::write(&jsonl, "{\"prompt\": \"a\", \"label\": true, \"response\": \"r1\"}\n\n{\"prompt\": \"b\", \"label\": null, \"response\": \"r2\"}\n")
        .expect("write");
    let mut spec = SuiteFileSpec::new(&jsonl);
    spec.label_column = Some("label".into());
    spec.response_column = Some("response".into());
    let rows = load_suite_file(&spec).expect("jsonl loads");
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].label_harmful, rows[1].label_harmful), (Some(true), None));
    assert_eq!(rows[1].response.as_deref(), Some("r2"));

    // Parquet written with arrow, as a user's pandas/polars export would be.
    use arrow::array::{ArrayRef, BooleanArray, StringArray};
    use std::sync::Arc;
    let pq = dir.path().join("mine.parquet");
    let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
        ("prompt", Arc::new(StringArray::from(vec![Some("p1"), Some("p2")])) as ArrayRef),
        ("harmful", Arc::new(BooleanArray::from(vec![Some(true), None])) as ArrayRef),
        ("cat", Arc::new(StringArray::from(vec![Some("x"), None])) as ArrayRef),
    ])
    .expect("batch");
    let file = std::fs::File::create(&pq).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    let mut spec = SuiteFileSpec::new(&pq);
    spec.label_column = Some("harmful".into());
    spec.category_column = Some("cat".into());
    let rows = load_suite_file(&spec).expect("parquet loads");
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].prompt.as_str(), rows[0].label_harmful, rows[0].category.as_deref()), ("p1", Some(true), Some("x")));
    assert_eq!((rows[1].label_harmful, rows[1].category.as_deref()), (None, None));
}

#[test]
fn suite_loader_names_file_and_missing_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.csv");
    std::fs::write(&p, "text,label\nhello,0\n").expect("write");
    let err = load_suite_file(&SuiteFileSpec::new(&p)).expect_err("no prompt column");
    assert!(matches!(err, SuiteError::MissingColumn { ref column, .. } if column == "prompt"));
    let msg = err.to_string();
    assert!(msg.contains("bad.csv") && msg.contains("\"prompt\"") && msg.contains("text"), "{msg}");

    let j = dir.path().join("bad.jsonl");
    std::fs::write(&j, "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n").expect("write");
    let msg = load_suite_file(&SuiteFileSpec::new(&j)).expect_err("line 2 lacks prompt").to_string();
    assert!(msg.contains("bad.jsonl") && msg.contains("prompt"), "{msg}");

    let l = dir.path().join("badlabel.csv");
    std::fs::write(&l, "prompt,label\nhi,perhaps\n").expect("write");
    let mut spec = SuiteFileSpec::new(&l);
    spec.label_column = Some("label".into());
    let msg = load_suite_file(&spec).expect_err("bad label").to_string();
    assert!(msg.contains("badlabel.csv") && msg.contains("perhaps"), "{msg}");
}

#[test]
fn report_has_one_polyline_point_per_iteration_and_escapes_text() {
    let mut its = Vec::new();
    for i in 0..4u32 {
        let mut m = BTreeMap::new();
        m.insert("reward/attacker".to_string(), f64::from(i) * 0.1);
        m.insert("reward/defender".to_string(), 1.0 - f64::from(i) * 0.1);
        if i != 2 {
            m.insert("asr/harmbench".to_string(), 0.5);
        }
        m.insert("kl".to_string(), 0.01 * f64::from(i));
        let mut intervals = BTreeMap::new();
        if i != 2 {
            intervals.insert("asr/harmbench".to_string(), (0.2, 0.8));
        }
        m.insert("refusal/advbench".to_string(), 0.25);
        intervals.insert("refusal/advbench".to_string(), (0.05, 0.7));
        its.push(IterationMetrics { iteration: i, metrics: m, intervals });
    }
    let input = ReportInput {
        title: "Run <b>1</b>".into(),
        iterations: its,
        plots: default_plots(),
        judge: Some(JudgeAccuracy {
            judge: "probe".into(),
            judge_key: "probe/v1/abc".into(),
            heads: vec![("response_refusal".into(), BinaryMetrics::from_predictions(&[true, false], &[true, true]))],
        }),
        examples: vec![ExampleGame {
            outcome: "DEFENDER_LOSE_BROKEN_DEFENSE".into(),
            artifact_key: "judge/0123abcd".into(),
            row: Some(7),
            prompt: "<script>alert('x')</script> & \"quotes\"".into(),
            response: "fine".into(),
            verdict: "harmful".into(),
        }],
        notes: vec![],
    };
    let html = render_report(&input);
    let polylines: Vec<&str> = html.split("<polyline").skip(1).collect();
    let points_of = |key: &str| -> usize {
        let pl = polylines.iter().find(|p| p.split("/>").next().is_some_and(|tag| tag.contains(&format!("data-key=\"{key}\"")))).expect("series present");
        let pts = pl.split("points=\"").nth(1).expect("points attr").split('"').next().expect("closing quote");
        pts.split(' ').count()
    };
    assert_eq!(polylines.len(), 5, "reward x2, asr, refusal, kl");
    // One 95% band per rate series, with 2 points per iteration (upper, then lower).
    let bands: Vec<&str> = html.split("<polygon class=\"band\"").skip(1).collect();
    assert_eq!(bands.len(), 2, "asr and refusal have intervals");
    let band_points = bands
        .iter()
        .find(|b| b.contains("data-key=\"asr/harmbench\""))
        .and_then(|b| b.split("points=\"").nth(1))
        .and_then(|p| p.split('"').next())
        .expect("asr band points");
    assert_eq!(band_points.split(' ').count(), 6, "3 iterations x (hi, lo)");
    assert!(html.contains("refusal/advbench (in-distribution)"), "advbench is labelled in the legend");
    assert!(html.contains("(band: 95% Wilson interval)"));
    assert_eq!(points_of("reward/attacker"), 4);
    assert_eq!(points_of("reward/defender"), 4);
    assert_eq!(points_of("asr/harmbench"), 3, "iteration 2 has no asr");
    assert_eq!(points_of("kl"), 4);
    assert!(!html.contains("<script"), "user text must be escaped");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quotes&quot;"));
    assert!(html.contains("Run &lt;b&gt;1&lt;/b&gt;"));
    assert!(html.contains("judge/0123abcd"));
    assert!(html.contains("<td>0.500</td>"), "accuracy 1/2 in the judge table");
    assert_eq!(html.matches("no data").count(), 2, "over-refusal, diversity have no data");
    assert!(!html.contains("src=") && !html.contains("<link") && !html.contains("href="), "no external assets");
}
