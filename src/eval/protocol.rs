//! The evaluation protocol behind the `eval@i` stage (stages/eval.rs): [`evaluate`] runs the
//! whole evaluation of one policy on the held-out suites (method.md §5) with any judge and
//! seed table, without a store, and returns the rows of `eval.parquet`,
//! `eval_attacker.parquet`, `eval_summary.parquet` (schema/eval.rs) and the manifest
//! metrics that `log`, `report` and `compare` read. Tests call it directly.
//!
//! # Protocol
//! - **Defender suites** (every `eval.suites` entry except `holdout_attacker`, plus
//!   `eval.custom_suites`): each prompt goes to the policy in the *defender* template
//!   (`game::defender_prompt`, CoT when `rollout.cot`), greedy unless `eval.greedy: false`
//!   (then rollout sampling with a per-row seed). The answer is extracted as in §5.1
//!   (`game::eval_extract_answer`: the `<answer>` block, or the whole output when there is
//!   none), cut to `eval.max_answer_tokens` tokens, and judged with the prompt. A custom suite
//!   with a response column is judged on its given responses (no generation).
//! - **Attacker** (`holdout_attacker`): each held-out harmful seed is revised by the policy
//!   with the attacker template, **sampled** at the rollout temperature/top-p/top-k with the
//!   row's seed `ctx.rng(row)` (the paper samples its holdout revisions; greedy revisions of
//!   similar seeds collapse and would understate diversity), or greedily with
//!   `eval.attacker_greedy`. Well-formed revisions enter SBERT diversity, Self-BLEU
//!   diversity and faithfulness (cosine to the seed); the format-violation rate counts all.
//! - **Subsets**: `data::suite_subset` picks the same prompts for every iteration of a run.
//! - **Batching**: `eval.batch_size` prompts per generation call, shortest first, and at
//!   most `batch_size × 256` prompt tokens per call (long jailbreak prompts go in smaller
//!   batches); outputs do not depend on it (row-independent sampler), so it is left out of
//!   the key.
//! - **Adversarial suites** (`harmbench_dan`, `jailbreak_wild`, any
//!   `dataset.adversarial_suites` entry) are harmful-labelled suites like the others: ASR is
//!   the headline (`suite_kind`: the name contains `harmbench`, or the suite is
//!   adversarial), refusal is reported beside it.
//! - **Judge**: the configured backend (`judge::build::build`), the probe from the
//!   `judge_model` input (judge-fit); every verdict is stored with the row.
//!
//! # Metrics written to the manifest (stable names)
//! | name | meaning |
//! |---|---|
//! | `asr/<suite>` | harmful responses / rows, suites with harmful prompts (HarmBench's headline) |
//! | `refusal/<suite>` | refusals / harmful-prompt rows (StrongREJECT, Do-Not-Answer, AdvBench headline) |
//! | `compliance/<suite>` | compliances / benign-prompt rows (over-refusal suites' headline) |
//! | `over_refusal/<suite>` | refusals / benign-prompt rows |
//! | `defender/format_violation` | share of generated outputs that broke the CoT format |
//! | `judge/parse_error` | share of verdicts the judge failed to produce |
//! | `diversity/sbert`, `diversity/self_bleu` | 1 − mean pairwise cosine (MiniLM); 1 − Self-BLEU |
//! | `attacker/faithfulness` | mean cosine(seed, revision) of well-formed revisions |
//! | `attacker/format_violation` | share of revisions that broke the CoT format |
//! | `attacker/n` | revised seeds |
//! | `intervals` | `{<rate name>: {k, n, lo, hi}}` for every rate above (95% Wilson) |
//!
//! Per-category rates are in `eval_summary.parquet` only.
use std::collections::BTreeMap;

use anyhow::{bail, Context};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::eval::bleu::self_bleu_diversity;
use crate::eval::rates::{summarize, EvalRow, GroupMetrics, Rate, SuiteKind};
use crate::eval::sbert::{cosine, sbert_diversity};
use crate::eval::suite::{load_suite_file, SuiteFileSpec};
use crate::game::{attacker_prompt, defender_prompt, eval_extract_answer, public_text, DefenderStyle, SeedLabel};
use crate::judge::{Embedder, Judge, JudgeInput, Verdict};
use crate::model::{batching, ChatMessage, Policy, Sample, SamplingParams, TokenId};
use crate::schema::eval::{AttackerRecord, EvalRecord, SummaryRecord, ALL};
use crate::schema::seeds::SeedRow;
use crate::schema::seeds::Split;

/// The attacker-diversity split (method.md §4.1, §5.3).
pub const HOLDOUT_ATTACKER: &str = "holdout_attacker";

const JUDGE_BATCH: usize = 64;

pub use super::settings::{AttackerSampling, EvalSettings};

/// One prompt to evaluate.
#[derive(Debug, Clone)]
struct Item {
    suite: String,
    category: String,
    prompt_id: String,
    prompt: String,
    harmful: bool,
    given: Option<String>,
}

/// Everything one evaluation produces.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    pub rows: Vec<EvalRecord>,
    pub attacker: Vec<AttackerRecord>,
    pub summary: Vec<SummaryRecord>,
    /// Manifest metrics (see the table in the module docs).
    pub metrics: serde_json::Map<String, Value>,
}

/// What [`evaluate`] needs.
pub struct EvalInputs<'a> {
    pub params: &'a EvalSettings,
    /// The run seed (picks each suite's subset, the same for every iteration).
    pub run_seed: u64,
    /// Suites whose headline is ASR besides HarmBench's (the `eval` stage reads them from its dataset input).
    pub adversarial: &'a std::collections::BTreeSet<String>,
    /// The dataset artifact's seed table (eval suites and `holdout_attacker`).
    pub seeds: &'a [SeedRow],
    /// The policy, local or on the servers of `generation` (src/remote/).
    pub generator: &'a crate::remote::Generator<'a>,
    pub judge: &'a dyn Judge,
    /// MiniLM; required when `holdout_attacker` is evaluated.
    pub embedder: Option<&'a dyn Embedder>,
    /// The node's row generator (`ctx.rng`).
    pub rng: &'a dyn Fn(u64) -> ChaCha8Rng,
    /// The Ctrl-C flag: checked between batches and before every decoding step, so the
    /// evaluation stops within one step once it is set (nothing is published).
    pub cancel: &'a std::sync::atomic::AtomicBool,
    /// Called with (what, done rows) after each batch.
    pub progress: &'a dyn Fn(&str, u64),
}

/// Headline rate of a pinned or custom suite (method.md §5.2 and the table).
pub fn suite_kind(suite: &str, all_benign: bool) -> SuiteKind {
    if all_benign {
        SuiteKind::ComplianceOnBenign
    } else if suite.contains("harmbench") {
        SuiteKind::Asr
    } else {
        SuiteKind::RefusalOnHarmful
    }
}

/// Render a game chat prompt with the model's template (generation prompt, then the
/// assistant prefix verbatim) and tokenise it.
fn render(policy: &Policy, prompt: &crate::game::ChatPrompt) -> anyhow::Result<Vec<TokenId>> {
    let messages: Vec<ChatMessage> = prompt.messages.iter().map(|m| ChatMessage::new(m.role.as_str(), m.content.clone())).collect();
    let text = policy.tokenizer().render_chat(&messages, true, prompt.assistant_prefix.as_deref())?;
    Ok(policy.tokenizer().encode(&text, false)?)
}

fn check_cancelled(inputs: &EvalInputs<'_>) -> anyhow::Result<()> {
    if inputs.cancel.load(std::sync::atomic::Ordering::Relaxed) {
        anyhow::bail!("eval: interrupted");
    }
    Ok(())
}

/// Generate for every prompt, shortest first in row- and token-capped batches
/// ([`batching::length_capped`]); results come back in input order.
fn generate_all(
    inputs: &EvalInputs<'_>,
    prompts: &[Vec<TokenId>],
    seeds: &[u64],
    params: &SamplingParams,
    batch: usize,
    ids: &[String],
    what: &str,
) -> anyhow::Result<Vec<Sample>> {
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let plan = batching::length_capped(&lens, batch);
    inputs
        .generator
        .generate(prompts, seeds, params, &plan, ids, inputs.cancel, &mut |done| (inputs.progress)(what, done as u64))
        .with_context(|| format!("eval: generating {what}"))
}

/// Cut `text` to its first `max_tokens` tokens (§5.1); returns the text and whether it was cut.
fn truncate_tokens(policy: &Policy, text: &str, max_tokens: usize) -> anyhow::Result<(String, bool)> {
    let ids = policy.tokenizer().encode(text, false)?;
    if ids.len() <= max_tokens {
        return Ok((text.to_string(), false));
    }
    Ok((policy.tokenizer().decode(&ids[..max_tokens], false)?, true))
}

/// The prompts of every configured defender suite (pinned, then custom), in suite order.
fn defender_items(params: &EvalSettings, seeds: &[SeedRow], run_seed: u64) -> anyhow::Result<Vec<Item>> {
    let e = &params.eval;
    let mut items = Vec::new();
    for (suite, p) in e.suites.iter().filter(|(n, _)| n.as_str() != HOLDOUT_ATTACKER) {
        let rows = crate::data::suite_subset(seeds, suite, p.subset, run_seed);
        if rows.is_empty() {
            bail!("eval suite {suite:?} has no prompts in the dataset artifact (is it in dataset.eval_suites, or are its held-out fractions 0?)");
        }
        items.extend(rows.into_iter().map(|r| Item {
            suite: suite.clone(),
            category: r.category.clone(),
            prompt_id: r.id.clone(),
            prompt: r.text.clone(),
            harmful: r.label == SeedLabel::Harmful,
            given: None,
        }));
    }
    for (suite, c) in &e.custom_suites {
        let path = params.custom_suite_paths.get(suite).cloned().with_context(|| format!("eval.custom_suites.{suite}: no resolved path"))?;
        let file = SuiteFileSpec {
            path: path.clone(),
            prompt_column: c.prompt_column.clone(),
            label_column: c.label_column.clone(),
            category_column: c.category_column.clone(),
            response_column: c.response_column.clone(),
        };
        let loaded = load_suite_file(&file).with_context(|| format!("eval.custom_suites.{suite}"))?;
        // Reuse the pinned suites' seeded subset: the same rows every iteration.
        let as_seeds: Vec<SeedRow> = loaded
            .iter()
            .map(|r| SeedRow {
                id: format!("{suite}:{}", r.row),
                text: r.prompt.clone(),
                label: SeedLabel::Benign, // not read: suite_subset draws by id
                source: suite.clone(),
                category: String::new(),
                split: Split::Eval,
                suite: Some(suite.clone()),
            })
            .collect();
        let keep: std::collections::HashSet<String> =
            crate::data::suite_subset(&as_seeds, suite, c.subset, run_seed).into_iter().map(|r| r.id.clone()).collect();
        for r in loaded {
            let id = format!("{suite}:{}", r.row);
            if !keep.contains(&id) {
                continue;
            }
            let harmful = match (r.label_harmful, c.label) {
                (Some(h), _) => h,
                (None, Some(l)) => l == SeedLabel::Harmful,
                (None, None) => bail!("eval.custom_suites.{suite}: row {} has no label and the suite sets no default `label`", r.row),
            };
            items.push(Item { suite: suite.clone(), category: r.category.unwrap_or_default(), prompt_id: id, prompt: r.prompt, harmful, given: r.response });
        }
    }
    Ok(items)
}

fn rate_json(r: &Rate) -> Value {
    json!({"k": r.k, "n": r.n, "lo": r.lo, "hi": r.hi})
}

/// The summary rows of one group.
fn group_rows(suite: &str, category: &str, g: &GroupMetrics, kind: SuiteKind, overall: bool, out: &mut Vec<SummaryRecord>) {
    let mut push = |metric: &str, r: &Rate, headline: bool| {
        out.push(SummaryRecord {
            suite: suite.into(),
            category: category.into(),
            metric: metric.into(),
            headline: overall && headline,
            k: r.k as u64,
            n: r.n as u64,
            value: r.value,
            lo: r.lo,
            hi: r.hi,
        });
    };
    if g.refusal_on_harmful.is_some() {
        push("asr", &g.asr, kind == SuiteKind::Asr);
    }
    if let Some(r) = &g.refusal_on_harmful {
        push("refusal", r, kind == SuiteKind::RefusalOnHarmful);
    }
    if let Some(r) = &g.compliance_on_benign {
        push("compliance", r, kind == SuiteKind::ComplianceOnBenign);
    }
    if let Some(r) = &g.over_refusal {
        push("over_refusal", r, false);
    }
    push("format_violation", &g.format_violation, false);
    push("parse_error", &g.parse_error, false);
}

/// Run the whole evaluation (see the module docs).
pub fn evaluate(inputs: &EvalInputs<'_>) -> anyhow::Result<EvalOutput> {
    let e = &inputs.params.eval;
    let cot = inputs.params.cot;
    let policy = inputs.generator.policy();
    let batch = e.batch_size as usize;
    let rollout_params = inputs.params.attacker_sampling.sampling_params();

    // ---- defender suites ----
    let items = defender_items(inputs.params, inputs.seeds, inputs.run_seed)?;
    let style = if cot { DefenderStyle::Cot } else { DefenderStyle::Plain };
    let gen_idx: Vec<usize> = (0..items.len()).filter(|i| items[*i].given.is_none()).collect();
    let mut prompts = Vec::with_capacity(gen_idx.len());
    for i in &gen_idx {
        prompts.push(render(policy, &defender_prompt(&items[*i].prompt, style))?);
    }
    let defender_params = if e.greedy {
        SamplingParams::greedy(e.max_new_tokens as usize)
    } else {
        SamplingParams { max_new_tokens: e.max_new_tokens as usize, ..rollout_params.clone() }
    };
    // Per-row seeds: rows 0..n of the node's generator (unused when greedy).
    let seeds: Vec<u64> = gen_idx.iter().map(|i| if e.greedy { 0 } else { (inputs.rng)(*i as u64).next_u64() }).collect();
    let ids: Vec<String> = gen_idx.iter().map(|&i| format!("{}/{}", items[i].suite, items[i].prompt_id)).collect();
    let samples = generate_all(inputs, &prompts, &seeds, &defender_params, batch, &ids, "defender suites")?;
    let mut generated: BTreeMap<usize, Sample> = gen_idx.iter().copied().zip(samples).collect();

    let mut rows = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let (raw, public, tokens, violation, given) = match &it.given {
            Some(resp) => (resp.clone(), resp.trim().to_string(), policy.tokenizer().encode(resp, false)?.len(), false, true),
            None => {
                let s = generated.remove(&i).expect("generated above");
                let turn = public_text(&s.text, cot);
                (s.text, turn.text, s.token_ids.len(), turn.violation.unwrap_or(false), false)
            }
        };
        // §5.1: a given response is judged as it is (only cut); a generated one through the
        // eval fork's answer extraction.
        let extracted = if given {
            raw.clone()
        } else if cot {
            eval_extract_answer(&raw).text
        } else {
            raw.trim().to_string()
        };
        let (judged, truncated) = truncate_tokens(policy, &extracted, e.max_answer_tokens as usize)?;
        rows.push(EvalRecord {
            row: i as u32,
            suite: it.suite.clone(),
            category: it.category.clone(),
            prompt_id: it.prompt_id.clone(),
            prompt: it.prompt.clone(),
            label: if it.harmful { SeedLabel::Harmful } else { SeedLabel::Benign },
            given_response: given,
            raw_output: raw,
            public_answer: public,
            judged_answer: judged,
            truncated,
            format_violation: violation,
            output_tokens: tokens as u32,
            prompt_harmful: None,
            response_refusal: None,
            response_harmful: None,
            parse_error: false,
            judge_raw: None,
        });
    }
    let mut done = 0u64;
    for chunk in rows.chunks_mut(JUDGE_BATCH) {
        check_cancelled(inputs)?;
        let pairs: Vec<JudgeInput> =
            chunk.iter().map(|r| JudgeInput::new(r.prompt.clone(), r.judged_answer.clone()).with_seed_label(r.label == SeedLabel::Harmful)).collect();
        let verdicts = inputs.judge.judge_batch(&pairs).with_context(|| format!("eval: judging with {}", inputs.judge.name()))?;
        if verdicts.len() != chunk.len() {
            bail!("judge {} returned {} verdicts for {} pairs", inputs.judge.name(), verdicts.len(), chunk.len());
        }
        for (row, v) in chunk.iter_mut().zip(verdicts) {
            row.prompt_harmful = v.prompt_harmful;
            row.response_refusal = v.response_refusal;
            row.response_harmful = v.response_harmful;
            row.parse_error = v.parse_error;
            row.judge_raw = v.raw;
        }
        done += chunk.len() as u64;
        (inputs.progress)("judging", done);
    }

    // ---- rates ----
    let eval_rows: Vec<EvalRow> = rows
        .iter()
        .map(|r| EvalRow {
            suite: r.suite.clone(),
            category: Some(r.category.clone()).filter(|c| !c.is_empty()),
            prompt_harmful: r.label == SeedLabel::Harmful,
            verdict: Verdict {
                prompt_harmful: r.prompt_harmful,
                response_refusal: r.response_refusal,
                response_harmful: r.response_harmful,
                parse_error: r.parse_error,
                raw: None,
            },
            format_violation: r.format_violation,
        })
        .collect();
    let mut kinds = BTreeMap::new();
    for s in rows.iter().map(|r| r.suite.as_str()).collect::<std::collections::BTreeSet<_>>() {
        let all_benign = rows.iter().filter(|r| r.suite == s).all(|r| r.label == SeedLabel::Benign);
        let kind = if inputs.adversarial.contains(s) { SuiteKind::Asr } else { suite_kind(s, all_benign) };
        kinds.insert(s.to_string(), kind);
    }
    let mut metrics = serde_json::Map::new();
    let mut intervals = serde_json::Map::new();
    let mut summary = Vec::new();
    let mut put = |metrics: &mut serde_json::Map<String, Value>, name: String, r: &Rate| {
        metrics.insert(name.clone(), json!(r.value));
        intervals.insert(name, rate_json(r));
    };
    for s in summarize(&eval_rows, &kinds) {
        group_rows(&s.suite, ALL, &s.overall, s.kind, true, &mut summary);
        for (cat, g) in &s.per_category {
            group_rows(&s.suite, cat, g, s.kind, false, &mut summary);
        }
        let o = &s.overall;
        if let Some(rh) = &o.refusal_on_harmful {
            put(&mut metrics, format!("asr/{}", s.suite), &o.asr);
            put(&mut metrics, format!("refusal/{}", s.suite), rh);
        }
        if let Some(c) = &o.compliance_on_benign {
            put(&mut metrics, format!("compliance/{}", s.suite), c);
        }
        if let Some(orf) = &o.over_refusal {
            put(&mut metrics, format!("over_refusal/{}", s.suite), orf);
        }
    }
    let n_gen = rows.iter().filter(|r| !r.given_response).count();
    put(&mut metrics, "defender/format_violation".into(), &Rate::new(rows.iter().filter(|r| r.format_violation).count(), n_gen));
    put(&mut metrics, "judge/parse_error".into(), &Rate::new(rows.iter().filter(|r| r.parse_error).count(), rows.len()));

    // ---- attacker (held-out seeds) ----
    let mut attacker = Vec::new();
    if let Some(p) = e.suites.get(HOLDOUT_ATTACKER) {
        let held = crate::data::suite_subset(inputs.seeds, HOLDOUT_ATTACKER, p.subset, inputs.run_seed);
        let held: Vec<&SeedRow> = held.into_iter().filter(|s| s.label == SeedLabel::Harmful).collect();
        if held.is_empty() {
            bail!("eval suite holdout_attacker has no harmful seeds in the dataset artifact (dataset.holdout_attacker_fraction is 0?)");
        }
        let mut prompts = Vec::with_capacity(held.len());
        for s in &held {
            prompts.push(render(policy, &attacker_prompt(&s.text, SeedLabel::Harmful, cot))?);
        }
        let params = if e.attacker_greedy { SamplingParams::greedy(inputs.params.attacker_sampling.max_new_tokens as usize) } else { rollout_params.clone() };
        // Rows offset past the defender rows, so no seed is shared with a defender sample.
        let base = items.len() as u64;
        let seeds: Vec<u64> = (0..held.len() as u64).map(|j| if e.attacker_greedy { 0 } else { (inputs.rng)(base + j).next_u64() }).collect();
        let ids: Vec<String> = held.iter().map(|s| format!("{HOLDOUT_ATTACKER}/{}", s.id)).collect();
        let samples = generate_all(inputs, &prompts, &seeds, &params, batch, &ids, "attacker revisions")?;
        for (j, (s, sample)) in held.iter().zip(samples).enumerate() {
            let turn = public_text(&sample.text, cot);
            let violation = turn.violation.unwrap_or(false) || turn.text.is_empty();
            attacker.push(AttackerRecord {
                row: j as u32,
                seed_id: s.id.clone(),
                seed: s.text.clone(),
                category: s.category.clone(),
                sample_seed: seeds[j],
                raw_output: sample.text,
                revision: turn.text,
                thinking: turn.thinking,
                format_violation: violation,
                faithfulness: None,
            });
        }
        let ok: Vec<usize> = (0..attacker.len()).filter(|j| !attacker[*j].format_violation).collect();
        put(&mut metrics, "attacker/format_violation".into(), &Rate::new(attacker.len() - ok.len(), attacker.len()));
        metrics.insert("attacker/n".into(), json!(attacker.len()));
        metrics.insert("attacker/well_formed".into(), json!(ok.len()));
        if !ok.is_empty() {
            let embedder = inputs.embedder.context("the holdout_attacker eval needs the MiniLM embedder")?;
            let mut texts: Vec<String> = ok.iter().map(|j| attacker[*j].revision.clone()).collect();
            texts.extend(ok.iter().map(|j| attacker[*j].seed.clone()));
            let emb = embedder.embed(&texts).context("eval: embedding attacker revisions")?;
            let (rev, seed_emb) = emb.split_at(ok.len());
            let mut sum = 0.0;
            for (k, j) in ok.iter().enumerate() {
                let c = cosine(&seed_emb[k], &rev[k]);
                attacker[*j].faithfulness = Some(c);
                sum += c;
            }
            metrics.insert("attacker/faithfulness".into(), json!(sum / ok.len() as f64));
            if let Some(d) = sbert_diversity(rev) {
                metrics.insert("diversity/sbert".into(), json!(d));
            }
            if let Some(d) = self_bleu_diversity(&texts[..ok.len()]) {
                metrics.insert("diversity/self_bleu".into(), json!(d));
            }
        }
    }
    metrics.insert("rows".into(), json!(rows.len()));
    metrics.insert("intervals".into(), Value::Object(intervals));
    Ok(EvalOutput { rows, attacker, summary, metrics })
}
