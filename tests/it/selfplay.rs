//! Integration tests: the self-play loop (base → rollout → judge → update) through the real
//! CLI on temporary stores: learning moves the policy in the rewarded direction (and the
//! other way when the reward flips), kill-and-resume reproduces the uninterrupted result,
//! artifacts have the documented shape, and `generate` answers with the real SmolLM2.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::util::{bin, root, sr, text, tiny_text_abs};
use self_redteam::model::Policy;
use self_redteam::schema::judged::JudgedSchema;
use self_redteam::schema::rollout::{GameRow, GamesSchema};
use self_redteam::schema::update_steps::UpdateStepsSchema;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// `run` every node of `config` (with `extra` arguments); it must succeed.
fn run_all(config: &Path, store: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    let o = sr(config, store, &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    o
}

/// (key, content digest, artifact dir) of a node.
fn node(config: &Path, store: &Path, name: &str) -> (String, String, PathBuf) {
    let o = sr(config, store, &["show", name, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("show json");
    (
        v["manifest"]["key"].as_str().expect("key").to_string(),
        v["manifest"]["content_digest"].as_str().expect("digest").to_string(),
        PathBuf::from(v["dir"].as_str().expect("dir")),
    )
}

fn metric(dir: &Path, name: &str) -> Value {
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    m["metrics"][name].clone()
}

/// A config for the learning tests: defender-only, no CoT, every seed of one label, and a
/// keyword judge whose "refusal" is any lowercase ASCII letter. With harmful seeds a refusal
/// earns the defender +1 and a compliance −1; with benign seeds the signs flip (method.md
/// §2.3). The response-harm term is constant (+1: no harmful keywords).
/// lr 0.04: large for a real model, right for this 2-layer random one (at 0.02 the effect of 3
/// iterations was within its seed-to-seed spread).
/// Settings of the learning tests, chosen so the effect's direction is unmistakable on either
/// instruction set (`learning_effect_spread_over_run_seeds`, run seeds 7, 8, 9):
/// - 2-token answers: the reward (a letter in the answer) lands on the token that earned it
///   instead of being spread over 8 tokens of noise;
/// - 32 seeds per iteration (4 optimizer steps) for 5 iterations: 20 steps.
///
/// The earlier setting (3 iterations of 16 seeds, 8 tokens) rose 1.54x at seed 7 on an AVX-512
/// machine and 1.43x on an AVX2 one, under its 1.5x threshold. With these settings (measured,
/// ratio of the letter mass trained/base): AVX2 (scripts/isa_avx2.sh) rise 5.0-7.4x (ln ratio
/// mean 1.80, sd 0.19), fall 0.03-0.09x (11-33x); AVX-512 (native) rise 5.3-7.1x (ln ratio mean
/// 1.80, sd 0.16), fall 0.07-0.13x (8-14x).
const LEARN_ITERATIONS: u32 = 5;
const LEARN_SEEDS_PER_ITERATION: u32 = 32;
const LEARN_LR: f64 = 0.04;
const LEARN_MAX_NEW_TOKENS: u32 = 2;
/// The factor by which the rewarded mass must rise (the penalised one fall): well below the
/// smallest effect measured on either instruction set, well above 1.
const LEARN_MIN_RATIO: f64 = 2.5;

/// A learning-test setting: the environment variable `name` when set and parseable (for
/// `learning_effect_spread_over_run_seeds`), else `default`.
fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn learning_config(dir: &Path, harmful_fraction: f64, run_seed: u64) -> PathBuf {
    let letters: Vec<String> = ('a'..='z').map(|c| format!("\"{c}\"")).collect();
    let (iterations, seeds) = (knob("LEARN_ITERATIONS", LEARN_ITERATIONS), knob("LEARN_SEEDS_PER_ITERATION", LEARN_SEEDS_PER_ITERATION));
    let (lr, max_new) = (knob("LEARN_LR", LEARN_LR), knob("LEARN_MAX_NEW_TOKENS", LEARN_MAX_NEW_TOKENS));
    let text = format!(
        "run: {{seed: {run_seed}, iterations: {iterations}, threads: 2}}\n\
         dataset: {{sources_dir: {src}, max_rows_per_file: 40}}\n\
         base: {{model: {{format: tiny_random, path: builtin, sha256: {{}}}}}}\n\
         prep: {{seeds_per_iteration: {seeds}, harmful_fraction: {harmful_fraction}, revise_fraction: 0.0}}\n\
         rollout: {{max_new_tokens: {max_new}, batch_size: 16, cot: false, mode: defender_only}}\n\
         judge: {{backend: keywords, keywords: {{refusal: [{letters}]}}}}\n\
         update: {{lr: {lr}, micro_batch_size: 8, warmup_ratio: 0.0, sft_coef: 0.0}}\n\
         eval: {{every: 100, suites: {{harmbench: {{subset: 2}}}}}}\n",
        src = root().join(".cache/sources").display(),
        letters = letters.join(", "),
    );
    let p = dir.join(format!("learn-{harmful_fraction}-{run_seed}.yaml"));
    std::fs::write(&p, text).expect("write config");
    p
}

/// Mean probability mass on lowercase-letter tokens at every response position of `games`'
/// defender turns (teacher-forced): how likely the rewarded behaviour is under `policy`.
fn letter_mass(policy: &Policy, games: &[GameRow]) -> f64 {
    let _g = tch::no_grad_guard();
    let letters: Vec<i64> = ('a'..='z').map(|c| i64::from(policy.tokenizer().token_to_id(&c.to_string()).expect("byte token"))).collect();
    let letters = Tensor::from_slice(&letters);
    let mut total = 0.0;
    let mut n = 0usize;
    for g in games {
        let ids: Vec<i64> = g.defender_prompt_ids.iter().chain(&g.defender_response_ids).map(|&x| i64::from(x)).collect();
        let (p, t) = (g.defender_prompt_ids.len() as i64, ids.len() as i64);
        let input = Tensor::from_slice(&ids).view([1, t]);
        let mask = Tensor::ones([1, t], (Kind::Int64, Device::Cpu));
        let probs = policy.logits(&input, &mask).to_kind(Kind::Float).softmax(-1, Kind::Float).get(0).narrow(0, p - 1, t - p);
        let mass = probs.index_select(1, &letters).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        total += mass.sum(Kind::Double).double_value(&[]);
        n += (t - p) as usize;
    }
    total / n as f64
}

/// Train `LEARN_ITERATIONS` iterations; return the letter mass under base and under the last
/// update, measured on the games of rollout@1 (sampled from the base policy).
fn learn(harmful_fraction: f64, run_seed: u64) -> (f64, f64) {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = learning_config(tmp.path(), harmful_fraction, run_seed);
    let iterations = knob("LEARN_ITERATIONS", LEARN_ITERATIONS);
    let seeds = u64::from(knob("LEARN_SEEDS_PER_ITERATION", LEARN_SEEDS_PER_ITERATION));
    let store = tmp.path().join("s");
    run_all(&cfg, &store, &[]);
    let last = format!("update@{iterations}");
    let (_, _, base_dir) = node(&cfg, &store, "base");
    let (_, _, rollout_dir) = node(&cfg, &store, "rollout@1");
    let (_, _, judge_dir) = node(&cfg, &store, "judge@1");
    let (_, _, upd_dir) = node(&cfg, &store, &last);
    let games = self_redteam::schema::read_parquet::<GamesSchema>(&rollout_dir.join("games.parquet")).expect("games");
    let judged = self_redteam::schema::read_parquet::<JudgedSchema>(&judge_dir.join("judged.parquet")).expect("judged");
    // The scripted judge sees both kinds of answers, so the update has a signal to follow.
    let refusals = judged.iter().filter(|j| j.refusal == Some(true)).count();
    assert!(refusals > 0 && refusals < judged.len(), "need both outcomes in the batch, got {refusals}/{}", judged.len());
    assert!(judged.iter().all(|j| j.defender_kept && !j.attacker_kept), "defender-only: every defender sample trains");
    let steps = self_redteam::schema::read_parquet::<UpdateStepsSchema>(&upd_dir.join("steps.parquet")).expect("steps");
    let per_iteration = seeds.div_ceil(8);
    let expected: Vec<u64> = (per_iteration * u64::from(iterations - 1)..per_iteration * u64::from(iterations)).collect();
    assert_eq!(steps.iter().map(|s| s.step).collect::<Vec<_>>(), expected, "{per_iteration} steps per iteration, indices continue across iterations");
    let base = Policy::load(&base_dir, Device::Cpu, Kind::Float).expect("base policy");
    let trained = Policy::load(&upd_dir, Device::Cpu, Kind::Float).expect("trained policy");
    let (before, after) = (letter_mass(&base, &games), letter_mass(&trained, &games));
    eprintln!("harmful_fraction {harmful_fraction} run seed {run_seed}: letter mass base {before:.4} -> {last} {after:.4} ({:.2}x)", after / before);
    (before, after)
}

/// Not a test: the effect's spread over run seeds (`LEARN_RUN_SEEDS=7,8,9`, and the knobs of
/// `learning_config`), for choosing the settings and thresholds of the two tests below.
#[test]
#[ignore]
fn learning_effect_spread_over_run_seeds() {
    let seeds: Vec<u64> =
        std::env::var("LEARN_RUN_SEEDS").unwrap_or_else(|_| "7,8,9,10,11,12".into()).split(',').map(|s| s.trim().parse().expect("seed")).collect();
    for hf in [1.0, 0.0] {
        let ratios: Vec<f64> = seeds
            .iter()
            .map(|&s| {
                let (b, a) = learn(hf, s);
                a / b
            })
            .collect();
        let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        let sd = (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (logs.len() as f64 - 1.0).max(1.0)).sqrt();
        eprintln!(
            "SPREAD harmful_fraction {hf}: ratios {ratios:.2?}; ln ratio mean {mean:.3} sd {sd:.3}; min {:.2}x max {:.2}x",
            ratios.iter().cloned().fold(f64::INFINITY, f64::min),
            ratios.iter().cloned().fold(0.0, f64::max)
        );
    }
}

#[test]
fn selfplay_updates_make_the_rewarded_response_more_likely() {
    let (before, after) = learn(1.0, 7);
    // Harmful seeds: a "refusal" (any lowercase letter) is rewarded.
    assert!(after > before * LEARN_MIN_RATIO, "letter mass should rise: base {before:.4} -> trained {after:.4}");
}

#[test]
fn selfplay_updates_make_the_penalised_response_less_likely() {
    let (before, after) = learn(0.0, 7);
    // Benign seeds: the same "refusal" is now penalised (wrong refusal, method.md §2.3).
    assert!(after < before / LEARN_MIN_RATIO, "letter mass should fall: base {before:.4} -> trained {after:.4}");
}

#[test]
fn kill_during_update_then_resume_gives_the_uninterrupted_policy() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A learning rate that visibly moves the tiny model, so each policy differs from the last.
    let cfg = tmp.path().join("tiny.yaml");
    std::fs::write(&cfg, tiny_text_abs().replace("update:\n  micro_batch_size: 4\n", "update:\n  micro_batch_size: 4\n  lr: 0.01\n")).expect("write");

    let clean = tmp.path().join("clean");
    run_all(&cfg, &clean, &[]);

    let store = tmp.path().join("crashed");
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--store")
        .arg(&store)
        .arg("run")
        .env("SELF_REDTEAM_FAILPOINT", "update@2")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        let line = lines.next().expect("run ended before reaching the failpoint").expect("read");
        if line.starts_with("failpoint update@2") {
            break;
        }
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let o = sr(&cfg, &store, &["show", "update@2"]);
    assert_ne!(o.status.code(), Some(0), "update@2 must not look complete after the crash: {}", text(&o));

    let o = run_all(&cfg, &store, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hit   update@1") && err.contains("miss  update@2"), "{err}");

    let (_, d1, dir1) = node(&cfg, &store, "update@1");
    let (_, d2, dir2) = node(&cfg, &store, "update@2");
    let (_, c2, _) = node(&cfg, &clean, "update@2");
    assert_eq!(d2, c2, "resumed update@2 equals the uninterrupted one byte for byte");
    assert_ne!(d1, d2);
    assert_ne!(
        std::fs::read(dir1.join("model.safetensors")).expect("w1"),
        std::fs::read(dir2.join("model.safetensors")).expect("w2"),
        "the update changed the weights"
    );
    // Adam's step count carries over: update@2 continues where update@1 stopped.
    let s1 = metric(&dir1, "optimizer_steps_total").as_u64().expect("steps 1");
    let s2 = metric(&dir2, "optimizer_steps_total").as_u64().expect("steps 2");
    assert_eq!(s2, s1 + metric(&dir2, "optimizer_steps").as_u64().expect("steps"));
    assert!(s1 > 0);
}

#[test]
fn rollout_and_judge_rows_have_the_documented_shape() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("tiny.yaml");
    std::fs::write(&cfg, tiny_text_abs()).expect("write");
    let store = tmp.path().join("s");
    run_all(&cfg, &store, &["--iterations", "1"]);
    let (_, _, rdir) = node(&cfg, &store, "rollout@1");
    let games = self_redteam::schema::read_parquet::<GamesSchema>(&rdir.join("games.parquet")).expect("games");
    assert_eq!(games.len(), 8);
    let (_, _, bdir) = node(&cfg, &store, "base");
    let base = Policy::load(&bdir, Device::Cpu, Kind::Float).expect("base");
    for g in &games {
        let generated = g.data_type.is_generated();
        assert_eq!(g.attacker_turn, generated, "{}", g.game_id);
        if generated {
            let prompt = g.attacker_prompt.as_deref().expect("attacker prompt");
            assert!(prompt.contains(&g.seed_text) && prompt.ends_with(self_redteam::game::THINKING_PREFIX), "CoT attacker prompt: {prompt}");
            assert_eq!(base.tokenizer().encode(prompt, false).expect("encode"), g.attacker_prompt_ids);
            assert_eq!(g.attacker_response_ids.len(), g.attacker_logprobs.len());
            assert!(g.attacker_format_violation.is_some());
        } else {
            assert_eq!(g.public_attack, g.seed_text, "vanilla seeds go verbatim");
            assert!(g.attacker_prompt_ids.is_empty() && g.attacker_format_violation.is_none());
        }
        assert!(g.defender_prompt.contains(&format!("User: {}", g.public_attack)), "CoT defender template");
        assert_eq!(g.defender_response_ids.len(), g.defender_logprobs.len());
        assert!(g.defender_logprobs.iter().all(|l| *l <= 0.0 && l.is_finite()));
        // The sampler's log-probs are the model's own: the training forward agrees.
        let toks: Vec<u32> = g.defender_prompt_ids.iter().chain(&g.defender_response_ids).copied().collect();
        let b = self_redteam::model::SequenceBatch::new(
            std::slice::from_ref(&g.defender_prompt_ids),
            std::slice::from_ref(&g.defender_response_ids),
            base.tokenizer().pad_id(),
            Device::Cpu,
        )
        .expect("batch");
        let lp = tch::no_grad(|| base.token_logprobs(&b).logprobs);
        let p = g.defender_prompt_ids.len() as i64;
        let got: Vec<f32> = Vec::<f32>::try_from(lp.get(0).narrow(0, p - 1, toks.len() as i64 - p)).expect("lp");
        for (a, e) in got.iter().zip(&g.defender_logprobs) {
            assert!((a - e).abs() < 1e-3, "forward {a} vs sampler {e}");
        }
    }
    let (_, _, jdir) = node(&cfg, &store, "judge@1");
    let judged = self_redteam::schema::read_parquet::<JudgedSchema>(&jdir.join("judged.parquet")).expect("judged");
    assert_eq!(judged.len(), games.len());
    for (j, g) in judged.iter().zip(&games) {
        assert_eq!(j.game_id, g.game_id);
        assert_eq!(j.prompt_harmful, Some(g.label == self_redteam::game::SeedLabel::Harmful), "keywords judge: prompt harm = seed label");
        assert_eq!(j.attacker_total.is_some(), g.attacker_turn);
        let terms = j.defender_refusal.expect("r") + j.defender_response_harm.expect("h") + j.defender_format.expect("cot format");
        assert_eq!(j.defender_total, Some(terms), "total is the sum of the named terms");
    }
    // Judging again hits the verdict cache under the store root.
    assert!(store.join(".verdict-cache").is_dir());
    let o = sr(&cfg, &store, &["run", "--only", "judge@1", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (_, _, jdir) = node(&cfg, &store, "judge@1");
    assert_eq!(metric(&jdir, "cache_hits").as_u64(), Some(8));
    assert_eq!(metric(&jdir, "cache_misses").as_u64(), Some(0));
    let o = sr(&cfg, &store, &["verify", "--all"]);
    assert_eq!(o.status.code(), Some(0), "the cache dir is not an artifact: {}", text(&o));
}

#[test]
fn generate_json_gives_token_ids_and_logprobs_for_a_store_ref() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("tiny.yaml");
    std::fs::write(&cfg, tiny_text_abs()).expect("write");
    let store = tmp.path().join("s");
    let o = sr(&cfg, &store, &["run", "--only", "base"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = sr(&cfg, &store, &["generate", "--model", "base", "--role", "attacker", "--max-new-tokens", "5", "--json", "seed one", "seed two"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let rows = v.as_array().expect("list");
    assert_eq!(rows.len(), 2);
    for (r, seed) in rows.iter().zip(["seed one", "seed two"]) {
        assert!(r["rendered_prompt"].as_str().expect("p").contains(seed));
        let n = r["token_ids"].as_array().expect("ids").len();
        assert!((1..=5).contains(&n));
        assert_eq!(r["logprobs"].as_array().expect("lp").len(), n);
    }
    let o = sr(&cfg, &store, &["generate", "--model", "update@7", "x"]);
    assert_ne!(o.status.code(), Some(0));
}

/// The real default checkpoint: `base` of pipeline.yaml imports SmolLM2-135M-Instruct.
#[test]
fn generate_greedy_on_the_default_base_knows_the_capital_of_france() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = root().join("pipeline.yaml");
    let store = tmp.path().join("s");
    let o = sr(&cfg, &store, &["run", "--only", "base"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = sr(&cfg, &store, &["generate", "--model", "base", "--greedy", "--max-new-tokens", "24", "What is the capital of France?"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(answer.contains("Paris"), "{answer}");
}

/// The SFT term's demonstrations (stages/sft_data.rs) with the tiny pipeline: every target is
/// the thinking prefix + a well-formed `<think>…</think><answer>…</answer>` whose answer is
/// the reference answer, ends with the end-of-turn token, and no request is an eval or
/// held-out prompt; the update then trains on them (its per-step SFT loss is recorded).
#[test]
fn sft_demonstrations_are_well_formed_hold_no_eval_prompt_and_train() {
    use self_redteam::schema::seeds::SeedsSchema;
    use self_redteam::schema::sft_demos::SftDemosSchema;
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("tiny.yaml");
    std::fs::write(&cfg, tiny_text_abs()).expect("write");
    let store = tmp.path().join("s");
    let o = sr(&cfg, &store, &["run", "--only", "dataset", "base", "sft-data", "prep@1", "rollout@1", "judge@1", "update@1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (_, _, ddir) = node(&cfg, &store, "dataset");
    let (_, _, sdir) = node(&cfg, &store, "sft-data");
    let (_, _, bdir) = node(&cfg, &store, "base");
    let seeds = self_redteam::schema::read_parquet::<SeedsSchema>(&ddir.join("seeds.parquet")).expect("seeds");
    let demos = self_redteam::schema::read_parquet::<SftDemosSchema>(&sdir.join("sft_demos.parquet")).expect("demos");
    assert_eq!(demos.len(), 4, "tiny.yaml asks for 4");
    let held_out: std::collections::HashSet<String> =
        seeds.iter().filter(|s| s.split != self_redteam::schema::seeds::Split::Train).map(|s| self_redteam::data::normalise(&s.text)).collect();
    assert!(held_out.len() > 10, "the dataset has eval prompts to avoid");
    let base = Policy::load(&bdir, Device::Cpu, Kind::Float).expect("base");
    let tok = base.tokenizer();
    for d in &demos {
        assert!(!held_out.contains(&self_redteam::data::normalise(&d.request)), "eval prompt used as a demonstration: {}", d.request);
        let body = d.target_text.strip_prefix(self_redteam::game::THINKING_PREFIX).expect("target starts with the thinking prefix");
        let p = self_redteam::game::cot_format_check_and_extract(body);
        assert!(!p.violation, "malformed demonstration {:?}: {:?}", d.target_text, p.broken_rules);
        assert_eq!(p.answer, d.response);
        assert_eq!(p.thinking.as_deref(), Some(d.thinking.as_str()));
        assert!(!d.thinking.is_empty());
        assert_eq!(d.target_ids.last(), Some(&tok.eos_id()), "the target ends the turn");
        assert_eq!(tok.encode(&d.target_text, false).expect("encode"), d.target_ids[..d.target_ids.len() - 1]);
        assert_eq!(tok.encode(&d.prompt_text, false).expect("encode"), d.prompt_ids);
        // The defender's reasoning-mode prompt, ending at the assistant header: the thinking
        // prefix is the start of the target instead.
        assert!(
            d.prompt_text.contains(&format!("User: {}", d.request))
                && d.prompt_text.ends_with("assistant\n")
                && !d.prompt_text.contains("Let's think step by step."),
            "defender prompt without the prefix: {}",
            d.prompt_text
        );
    }
    let (_, _, udir) = node(&cfg, &store, "update@1");
    let steps = self_redteam::schema::read_parquet::<UpdateStepsSchema>(&udir.join("steps.parquet")).expect("steps");
    assert!(!steps.is_empty());
    for s in &steps {
        let l = s.sft_loss.expect("every step carries the SFT loss");
        assert!(l.is_finite() && l > 0.0, "step {}: sft loss {l}", s.step);
    }
    assert_eq!(metric(&udir, "sft_demos").as_u64(), Some(4));
}

/// `gc --thin` bounds the store: the older policy loses its weights and optimizer state,
/// every key and every downstream artifact stays cached, `verify --all` passes, and a stage
/// that reads the thinned policy gets it rebuilt first, bit for bit.
#[test]
fn gc_thin_keeps_keys_and_run_rebuilds_a_thinned_policy_bit_identically() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("tiny.yaml");
    std::fs::write(&cfg, tiny_text_abs()).expect("write");
    let store = tmp.path().join("s");
    run_all(&cfg, &store, &[]);
    let (_, d1, dir1) = node(&cfg, &store, "update@1");
    let weights = std::fs::read(dir1.join("model.safetensors")).expect("weights");
    assert!(dir1.join("optimizer.safetensors").is_file());

    let o = sr(&cfg, &store, &["gc", "--thin", "--keep-last", "1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["thinned"].as_array().expect("thinned").iter().map(|t| t["node"].as_str().expect("node")).collect::<Vec<_>>(), ["update@1"], "{v:#}");
    assert_eq!(v["removed"].as_array().expect("removed").len(), 0);
    assert!(!dir1.join("model.safetensors").exists() && !dir1.join("optimizer.safetensors").exists(), "the tensors are gone");
    assert!(node(&cfg, &store, "update@2").2.join("model.safetensors").is_file(), "the newest policy stays whole");
    let o = sr(&cfg, &store, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(s["nodes"].as_array().expect("nodes").iter().all(|n| n["state"] == "cached"), "thinning changes no key: {s:#}");
    let o = sr(&cfg, &store, &["verify", "--all"]);
    assert_eq!(o.status.code(), Some(0), "a thinned artifact is not corrupt: {}", text(&o));

    // rollout@2 samples from update@1: rerunning it rebuilds update@1 first.
    let o = sr(&cfg, &store, &["run", "--only", "rollout@2", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rebuilding update@1"), "{}", text(&o));
    let (_, d1_again, dir1_again) = node(&cfg, &store, "update@1");
    assert_eq!(d1_again, d1, "same content digest");
    assert_eq!(std::fs::read(dir1_again.join("model.safetensors")).expect("weights"), weights, "bit-identical weights");
    let o = sr(&cfg, &store, &["verify", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
