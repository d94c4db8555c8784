//! `sft-data` stage: the demonstrations of the SFT term (method.md §3.1 step 6 and §4.2;
//! the original's "post-filled CoT" data). Inputs: `dataset` (its eval and held-out prompts are
//! never demonstrations) and `policy` = base (it writes the reasoning). Output:
//! `sft_demos.parquet` (schema/sft_demos.rs), read by every `update@i` when
//! `update.sft_coef > 0`.
//!
//! For each (benign request, reference answer) pair of `sft.source`, in a seeded order:
//! 1. skip it when its request is an eval or held-out prompt of the dataset;
//! 2. keep the answer whole when it fits `sft.max_response_tokens`, else cut it after its last
//!    paragraph that fits (skip it when even the first paragraph does not);
//! 3. ask the base policy for the reasoning behind the answer (`game::postfill_prompt`,
//!    sampled at `sft.temperature` / `sft.top_p`, at most `sft.max_thinking_tokens`);
//! 4. keep the demonstration only when that reasoning stopped by itself, is non-empty and
//!    holds no tag, and the joined target parses as well-formed with the reference answer as
//!    its answer (`game::cot_format_check_and_extract`).
//!
//! Post-filling stops once `sft.demos` are kept. Each candidate's draw is seeded by its own
//! row (`rng_for(seed, key, row)`), so the result does not depend on the batch size.
//! The target is the thinking prefix, the reasoning, the answer in tags, then the end-of-turn
//! token; the prompt is the defender's reasoning-mode prompt without the prefix.
// What `run` uses (compute only: the core crate builds params and keys, never runs a stage).
#[cfg(feature = "compute")]
use {
    super::base::load_policy_input,
    super::StageContext,
    crate::game::demos::{candidates, demonstration, Dropped, Rejected},
    crate::game::{postfill_prompt, render_prompt},
    crate::model::{SamplingParams, TokenId},
    crate::schema::seeds::{SeedsSchema, Split},
    crate::schema::sft_demos::{SftDemoRow, SftDemosSchema},
    anyhow::{bail, Context},
    rand::seq::SliceRandom,
    rand::RngCore,
    std::collections::HashSet,
};

/// Bump when the output for the same inputs would change.
pub const VERSION: u32 = 2; // 2: no cut inside a code fence

/// What `sft-data` reads from the spec. Key: the `sft` section without the source's path and
/// pin (the source enters by its sha256 as the pinned file `sft.source`) and without
/// `batch_size` (speed only), plus the digests of the defender template and the post-fill
/// instruction.
#[derive(Debug, Clone)]
pub struct Params {
    pub sft: crate::spec::SftParams,
    /// The source file, resolved (not in the key).
    pub source_path: std::path::PathBuf,
    /// `base.dtype`, not in the key (see `base::load_policy_input`).
    pub dtype: crate::spec::Dtype,
}

pub fn params(spec: &crate::spec::Spec) -> Params {
    Params { sft: spec.raw.sft.clone(), source_path: spec.source_path(&spec.raw.sft.source), dtype: spec.raw.base.dtype }
}

impl Params {
    pub fn key(&self) -> serde_json::Value {
        let mut v = super::to_key(&self.sft);
        super::strip_paths(&mut v);
        let m = v.as_object_mut().expect("sft is a map");
        m.remove("batch_size");
        m.insert("template_digest".into(), serde_json::Value::String(crate::game::template_digest().to_hex()));
        m.insert("postfill_template_digest".into(), serde_json::Value::String(crate::game::postfill_template_digest().to_hex()));
        v
    }
}

#[cfg(feature = "compute")]
pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    let (dtype, path) = (p.dtype, p.source_path.clone());
    let p = &p.sft;
    let seeds = ctx.read_parquet::<SeedsSchema>("dataset")?;
    let held_out: HashSet<&str> = seeds.iter().filter(|s| s.split != Split::Train).map(|s| s.id.as_str()).collect();
    crate::data::verify_source(&path, &p.source.sha256)?;
    let mut pairs = crate::data::read_labelled(&p.source, &path)?;
    // Seeded order, so `demos` < the pool takes a random sample rather than the file's head.
    pairs.shuffle(&mut ctx.rng(0));
    let policy = load_policy_input(ctx, "policy", dtype)?;
    let tok = policy.tokenizer();

    let (candidates, dropped) =
        candidates(&pairs, &held_out, tok, p.max_response_tokens as usize).with_context(|| format!("{}: reading the reference answers", ctx.node))?;
    let Dropped { eval_overlap: overlap, too_long, tagged } = dropped;

    let params = SamplingParams { temperature: p.temperature, top_p: p.top_p, max_new_tokens: p.max_thinking_tokens as usize, ..Default::default() };
    let want = p.demos as usize;
    let bar = ctx.progress(want as u64, "post-filling reasoning");
    let (mut not_stopped, mut malformed, mut tried) = (0usize, 0usize, 0usize);
    let mut rows: Vec<SftDemoRow> = Vec::new();
    for chunk in candidates.chunks(p.batch_size as usize) {
        if rows.len() >= want {
            break;
        }
        ctx.check_cancelled()?;
        let mut prompts: Vec<Vec<TokenId>> = Vec::with_capacity(chunk.len());
        for c in chunk {
            prompts.push(render_prompt(tok, &postfill_prompt(&c.request, &c.response))?.1);
        }
        let draw_seeds: Vec<u64> = chunk.iter().map(|c| ctx.rng(c.row).next_u64()).collect();
        let samples = policy
            .generate_interruptible(&prompts, &draw_seeds, &params, ctx.interrupt_flag())
            .with_context(|| format!("{}: post-filling reasoning", ctx.node))?;
        for (c, s) in chunk.iter().zip(samples) {
            if rows.len() >= want {
                break;
            }
            tried += 1;
            match demonstration(tok, c, &s.text, s.finished_by_stop)? {
                Ok(row) => {
                    rows.push(row);
                    bar.inc(1);
                }
                Err(Rejected::NotStopped) => not_stopped += 1,
                Err(Rejected::Malformed) => malformed += 1,
            }
        }
    }
    drop(bar);
    if rows.is_empty() {
        bail!(
            "{}: no demonstration could be made from {} ({} pairs: {overlap} are eval prompts, {too_long} too long for sft.max_response_tokens = {}, {tagged} hold tags; of {tried} post-filled, {not_stopped} did not stop within sft.max_thinking_tokens = {} and {malformed} were malformed)",
            ctx.node,
            p.source.path,
            pairs.len(),
            p.max_response_tokens,
            p.max_thinking_tokens
        );
    }
    let mean = |f: &dyn Fn(&SftDemoRow) -> usize| rows.iter().map(f).sum::<usize>() as f64 / rows.len() as f64;
    ctx.output.metric("demos", rows.len());
    ctx.output.metric("demos_requested", want);
    ctx.output.metric("source_pairs", pairs.len());
    ctx.output.metric("dropped_eval_overlap", overlap);
    ctx.output.metric("dropped_too_long", too_long);
    ctx.output.metric("dropped_tagged", tagged);
    ctx.output.metric("postfilled", tried);
    ctx.output.metric("rejected_not_stopped", not_stopped);
    ctx.output.metric("rejected_malformed", malformed);
    ctx.output.metric("cut_answers", rows.iter().filter(|r| r.cut).count());
    ctx.output.metric("mean_thinking_chars", mean(&|r| r.thinking.len()));
    ctx.output.metric("mean_target_tokens", mean(&|r| r.target_ids.len()));
    ctx.output.write_parquet::<SftDemosSchema>(&rows)?;
    Ok(())
}
