//! Evaluation: benchmark suite loading, metrics (refusal, ASR, over-refusal with Wilson
//! intervals; SBERT diversity; Self-BLEU) and the HTML report. Called by the `eval` stage
//! and the `report` verb.
