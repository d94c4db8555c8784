//! Evaluation: the protocol of the `eval` stage (`protocol::evaluate`), benchmark suite
//! loading, metrics (refusal, ASR, over-refusal with Wilson intervals; SBERT diversity;
//! Self-BLEU), paired statistics and the HTML report. Called by the `eval` stage
//! and the `report` verb.
//!
//! Data flow: suite rows (`suite`, or `data/` for pinned sets) → policy answers → judge
//! verdicts → `rates::EvalRow` → `rates::summarize` → per-iteration metric maps →
//! `report::render_report`. Diversity metrics (`bleu`, `sbert`) take texts / embeddings.

pub mod bleu;
#[cfg(feature = "compute")]
pub mod protocol;
pub mod rates;
pub mod report;
pub mod sbert;
pub mod settings;
pub mod stats;
pub mod suite;
