//! Integration tests of src/game and src/rl: the RL maths against torch/transformers goldens
//! (numbers pasted from `scripts/golden_rl.py`, run with torch 2.11.0 and transformers 5.23.0),
//! Adam state resume, and an end-to-end sanity check that a full `run_update` on a toy policy
//! moves probability the right way and never trains prompt or padding positions.
use std::collections::BTreeMap;

use self_redteam::game::{
    self, attack_turn, public_text, score_game, training_rewards, AttackTurn, CotFormat, GameMode, GameOptions, GameRecord, GameVerdict, JudgeLabels,
    OutcomeSet, Role, ScoredGame, SeedKind,
};
use self_redteam::rl::{
    clip_grad_norm, kl_k1, next_token_logprobs, ppo_clip_loss, prepare_advantages, returns_to_go, run_update, sft_loss, token_rewards, Adam, AdamConfig,
    CosineWithMinLr, PolicyError, RlError, RlSample, SftExample, TokenBatch, UpdateConfig,
};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-6;

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL, "{what}[{i}]: got {g}, want {w}");
    }
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("tensor to vec")
}

// ------------------------------------------------------------------ advantages (golden_rl.py "advantages")

fn golden_buffer() -> Vec<RlSample> {
    let roles = [Role::Attacker, Role::Defender, Role::Attacker, Role::Defender];
    let old: [&[f32]; 4] = [&[-1.2, -0.7, -2.3], &[-0.4, -1.9], &[-0.9, -1.1, -0.3, -2.0], &[-1.5]];
    let refr: [&[f32]; 4] = [&[-1.0, -0.9, -2.0], &[-0.6, -1.5], &[-1.3, -1.0, -0.8, -1.7], &[-1.1]];
    let reward = [2.5, -1.0, 12.0, 0.5];
    (0..4)
        .map(|i| RlSample {
            role: roles[i],
            token_ids: (0..(2 + old[i].len()) as i64).collect(),
            prompt_len: 2,
            old_logprobs: old[i].to_vec(),
            ref_logprobs: refr[i].to_vec(),
            reward: reward[i],
            format_violation: None,
            outcomes: OutcomeSet::new(),
        })
        .collect()
}

#[test]
fn kl_rewards_returns_and_per_role_advantages_match_torch_reference() {
    let buf = golden_buffer();
    // golden_rl.py, "kl" / "token_rewards" / "returns" lines, sample 2 (reward 12 clipped to 10)
    let kl = kl_k1(&buf[2].old_logprobs, &buf[2].ref_logprobs);
    assert_close(&kl, &[0.4, -0.10000000000000009, 0.5, -0.30000000000000004], "kl");
    let tr = token_rewards(&kl, 12.0, 0.01, 10.0);
    assert_close(&tr, &[-0.004, 0.0010000000000000009, -0.005, 10.003], "token rewards");
    assert_close(&returns_to_go(&tr, 1.0), &[9.995, 9.998999999999999, 9.998, 10.003], "returns");

    let (prep, stats) = prepare_advantages(&buf, 0.01, 10.0, 1.0);
    assert_close(&prep[0].returns, &[2.503, 2.5010000000000003, 2.503], "returns 0");
    assert_close(&prep[1].returns, &[-0.998, -0.996], "returns 1");
    assert_close(&prep[3].returns, &[0.504], "returns 3");
    // golden_rl.py "attacker mean 6.786 var 13.76235514285714", "defender mean ... var ..."
    assert!((stats[&Role::Attacker].mean - 6.786).abs() < TOL);
    assert!((stats[&Role::Attacker].var - 13.76235514285714).abs() < TOL);
    assert!((stats[&Role::Defender].mean - -0.49666666666666665).abs() < TOL);
    assert!((stats[&Role::Defender].var - 0.5006675555555554).abs() < TOL);
    assert_close(&prep[0].advantages, &[-1.154520620214829, -1.1550597379454919, -1.154520620214829], "adv 0");
    assert_close(&prep[2].advantages, &[0.8650143988487944, 0.8660926343101203, 0.8658230754447889, 0.8671708697714466], "adv 2");
    assert_close(&prep[1].advantages, &[-0.7085195808509357, -0.7056930399698813], "adv 1");
    assert_close(&prep[3].advantages, &[1.4142126208208168], "adv 3");
}

// ------------------------------------------------------------------ loss (golden_rl.py "loss and its gradient")

fn golden_logits() -> (Tensor, TokenBatch) {
    let (b, l, v) = (2i64, 5i64, 4i64);
    let vals: Vec<f64> = (0..b * l * v).map(|i| (i as f64 * 0.37).sin() * 2.0).collect();
    let logits = Tensor::from_slice(&vals).reshape([b, l, v]).set_requires_grad(true);
    let batch = TokenBatch::new(&[(&[1, 2, 3, 0, 2], 2), (&[3, 1, 0], 1)], 0, Device::Cpu);
    (logits, batch)
}

#[test]
fn ppo_clip_loss_and_its_gradient_wrt_logits_match_torch() {
    let (logits, batch) = golden_logits();
    let logp = next_token_logprobs(&logits, &batch.input_ids);
    assert_close(
        &to_vec(&logp),
        &[
            -1.209491842674687,
            -2.0401375588407094,
            -0.621188566063114,
            -1.4460578277657048,
            -1.2284098257806215,
            -0.6229437136790051,
            -1.1798571347098423,
            -2.69038657634095,
        ],
        "logp",
    );
    let delta = Tensor::from_slice(&[0.0, 0.3, -0.25, 0.05, 0.1, -0.4, 0.0, 0.0]).reshape([2, 4]);
    let old = logp.detach() + delta;
    let adv = Tensor::from_slice(&[0.0, 1.0, -0.5, 2.0, -1.5, 0.7, 0.0, 0.0]).reshape([2, 4]);
    let pl = ppo_clip_loss(&logp, &old, &adv, &batch.loss_mask, 0.2);
    assert!((pl.loss.double_value(&[]) - -0.29680164685706717).abs() < TOL);
    assert!((pl.clip_fraction - 0.6).abs() < TOL);
    assert_eq!(pl.tokens, 5.0);
    pl.loss.backward();
    let want = [
        0.0,
        0.0,
        0.0,
        0.0,
        0.04949406747528578,
        0.04618437467036248,
        0.03322232430597841,
        -0.12890076645162665,
        0.05941115817311575,
        -0.03305588972911903,
        -0.016661768812468444,
        -0.009693499631528275,
        0.07782324901357772,
        0.07298269999263537,
        -0.29088716429914596,
        0.14008121529293288,
        0.0,
        0.0,
        0.0,
        0.0,
        -0.06535523938143296,
        0.19198177717516257,
        -0.07378615314052123,
        -0.05284038465320835,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    assert_close(&to_vec(&logits.grad()), &want, "d loss / d logits");
}

#[test]
fn sft_cross_entropy_and_its_gradient_match_torch() {
    let (logits, batch) = golden_logits();
    let logp = next_token_logprobs(&logits, &batch.input_ids);
    let l = sft_loss(&logp, &batch.loss_mask);
    assert!((l.double_value(&[]) - 1.191747498425831).abs() < TOL);
    l.backward();
    let want = [
        0.0,
        0.0,
        0.0,
        0.0,
        0.0668100029042755,
        0.062342384921178856,
        0.04484544707257127,
        -0.17399783489802562,
        -0.09253891301680328,
        0.05148790561231982,
        0.02595239719701027,
        0.01509861020747319,
        0.04090666615702409,
        0.038362301518870115,
        -0.15290063406723792,
        0.0736316663913437,
        0.0,
        0.0,
        0.0,
        0.0,
        0.04815247327215466,
        -0.14144845128964587,
        0.05436420707172011,
        0.038931770945771084,
        -0.09272735766495946,
        0.05387659813744025,
        0.02581481413751382,
        0.013035945390005367,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    assert_close(&to_vec(&logits.grad()), &want, "d sft / d logits");
}

// ------------------------------------------------------------------ Adam (golden_rl.py "Adam + clipping")

fn adam_params() -> Vec<(String, Tensor)> {
    let p1 = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 0.25, -0.75]).reshape([2, 3]).set_requires_grad(true);
    let p2 = Tensor::from_slice(&[1.5f32, -0.5, 0.1, -2.0]).set_requires_grad(true);
    vec![("p1".into(), p1), ("p2".into(), p2)]
}

const ADAM_GRADS: [([f32; 6], [f32; 4]); 3] = [
    ([0.3, -0.2, 0.1, 0.05, 0.0, -0.4], [0.2, 0.1, -0.3, 0.05]),
    ([3.0, -2.0, 1.0, 0.5, 0.0, -4.0], [2.0, 1.0, -3.0, 0.5]),
    ([-0.6, 0.4, 0.9, 1.2, -0.3, 0.2], [-0.1, 0.7, 0.3, -0.9]),
];
const ADAM_LRS: [f64; 3] = [1e-3, 5e-4, 2e-4];

/// Put `g` into the parameters' `.grad()` through autograd: d/dp Σ p·g = g.
fn set_grads(params: &[(String, Tensor)], g1: &[f32], g2: &[f32]) {
    for (_, p) in params {
        p.shallow_clone().zero_grad();
    }
    let t1 = Tensor::from_slice(g1).reshape([2, 3]);
    let t2 = Tensor::from_slice(g2);
    ((&params[0].1 * t1).sum(Kind::Float) + (&params[1].1 * t2).sum(Kind::Float)).backward();
}

#[test]
fn adam_step_with_grad_clipping_matches_torch_optim_adam() {
    let params = adam_params();
    let mut adam = Adam::new(AdamConfig::default());
    // golden_rl.py "adam_norm" and "adam_p1"/"adam_p2" after each step
    let want_norm = [0.667083203792572, 6.67083215713501, 2.073643922805786];
    let want_p1: [[f64; 6]; 3] = [
        [0.49900001287460327, -0.9990000128746033, 1.9989999532699585, -0.0009999998146668077, 0.25, -0.7490000128746033],
        [0.49850696325302124, -0.9985069632530212, 1.9985069036483765, -0.001493050018325448, 0.25, -0.7485069632530212],
        [0.4984322190284729, -0.9984322190284729, 1.9983336925506592, -0.0016392989782616496, 0.25012463331222534, -0.7483710646629333],
    ];
    let want_p2: [[f64; 4]; 3] = [
        [1.4989999532699585, -0.5009999871253967, 0.10100000351667404, -2.000999927520752],
        [1.4985069036483765, -0.5014930367469788, 0.10149305313825607, -2.001492977142334],
        [1.4983710050582886, -0.5016746520996094, 0.10160864144563675, -2.00140118598938],
    ];
    for k in 0..3 {
        set_grads(&params, &ADAM_GRADS[k].0, &ADAM_GRADS[k].1);
        let norm = clip_grad_norm(&params, 1.0);
        assert!((norm - want_norm[k]).abs() < 1e-5, "norm {k}: {norm}");
        adam.step(&params, ADAM_LRS[k]);
        assert_close(&to_vec(&params[0].1), &want_p1[k], "p1");
        assert_close(&to_vec(&params[1].1), &want_p2[k], "p2");
    }
    let state: BTreeMap<String, Tensor> = adam.export_state().into_iter().collect();
    assert_eq!(state["step"].int64_value(&[]), 3);
    assert_close(
        &to_vec(&state["p1.exp_avg"]),
        &[0.03584014251828194, -0.023893428966403008, 0.06499340385198593, 0.06866490095853806, -0.014467279426753521, -0.07672141492366791],
        "exp_avg",
    );
    assert_close(
        &to_vec(&state["p1.exp_avg_sq"]),
        &[0.017854033038020134, 0.00793512538075447, 0.010937262326478958, 0.017123840749263763, 0.0010465108789503574, 0.02476375922560692],
        "exp_avg_sq",
    );
}

#[test]
fn adam_resumed_from_exported_state_continues_bit_for_bit() {
    let straight = adam_params();
    let mut a = Adam::new(AdamConfig::default());
    for k in 0..3 {
        set_grads(&straight, &ADAM_GRADS[k].0, &ADAM_GRADS[k].1);
        clip_grad_norm(&straight, 1.0);
        a.step(&straight, ADAM_LRS[k]);
    }
    let resumed = adam_params();
    let mut b = Adam::new(AdamConfig::default());
    for k in 0..2 {
        set_grads(&resumed, &ADAM_GRADS[k].0, &ADAM_GRADS[k].1);
        clip_grad_norm(&resumed, 1.0);
        b.step(&resumed, ADAM_LRS[k]);
    }
    // Save through safetensors bytes, as the update stage would, and start a fresh optimiser.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("adam.safetensors");
    let exported = b.export_state();
    let named: Vec<(&str, &Tensor)> = exported.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, &path).expect("write state");
    drop(b);
    let loaded = Tensor::read_safetensors(&path).expect("read state");
    let mut c = Adam::import_state(AdamConfig::default(), loaded, &resumed).expect("import");
    assert_eq!(c.steps_taken(), 2);
    set_grads(&resumed, &ADAM_GRADS[2].0, &ADAM_GRADS[2].1);
    clip_grad_norm(&resumed, 1.0);
    c.step(&resumed, ADAM_LRS[2]);
    for i in 0..2 {
        assert_eq!(to_vec(&straight[i].1), to_vec(&resumed[i].1), "param {i} after resume");
    }
}

#[test]
fn adam_keeps_an_f32_master_copy_for_bf16_parameters() {
    let p = Tensor::from_slice(&[1.0f32, -1.0]).to_kind(Kind::BFloat16).set_requires_grad(true);
    let params = vec![("w".to_owned(), p.shallow_clone())];
    let mut adam = Adam::new(AdamConfig::default());
    for _ in 0..10 {
        p.shallow_clone().zero_grad();
        (&p.to_kind(Kind::Float) * Tensor::from_slice(&[1.0f32, -1.0])).sum(Kind::Float).backward();
        clip_grad_norm(&params, 1.0);
        adam.step(&params, 1e-4); // each step is far below bf16 resolution at 1.0
    }
    let state: BTreeMap<String, Tensor> = adam.export_state().into_iter().collect();
    let master = to_vec(&state["w.master"]);
    assert!((master[0] - (1.0 - 10.0 * 1e-4)).abs() < 1e-6, "master {master:?}");
    assert!((master[1] - (-1.0 + 10.0 * 1e-4)).abs() < 1e-6);
}

// ------------------------------------------------------------------ LR schedule (golden_rl.py "LR schedule")

#[test]
fn cosine_with_min_lr_matches_transformers_schedule() {
    let s = CosineWithMinLr { base_lr: 1.0, warmup_steps: 3, total_steps: 20, min_lr_ratio: 0.1 };
    let want = [
        0.0,
        0.3333333333333333,
        0.6666666666666666,
        1.0,
        0.9923378948577558,
        0.96961250323196,
        0.9325977110783263,
        0.8825540127492966,
        0.8211855863706654,
        0.7505822600994423,
        0.6731483455324374,
        0.5915207617584859,
        0.5084792382415142,
        0.4268516544675628,
        0.3494177399005578,
        0.2788144136293347,
        0.21744598725070347,
        0.1674022889216737,
        0.13038749676803993,
        0.1076621051422442,
        0.1,
        0.1076621051422442,
        0.13038749676803993,
        0.16740228892167366,
        0.2174459872507034,
        0.27881441362933457,
    ];
    let got: Vec<f64> = (0..26).map(|k| s.lr_at(k)).collect();
    assert_close(&got, &want, "lr");
    // The paper's run: 5e-7, 1875 steps, warm-up ceil(3%) = 57, min 10%.
    let p = CosineWithMinLr::from_warmup_ratio(5e-7, 1875, 0.03, 0.1);
    assert_eq!(p.warmup_steps, 57);
    let steps = [0u64, 1, 56, 57, 58, 200, 1000, 1874, 1875, 1900];
    let want = [
        0.0,
        8.771929824561403e-09,
        4.912280701754385e-07,
        5e-07,
        4.999996640579237e-07,
        4.93165205118687e-07,
        2.6178803128421367e-07,
        5.000033594207625e-08,
        5e-08,
        5.0209931196515e-08,
    ];
    for (k, w) in steps.iter().zip(want) {
        assert!((p.lr_at(*k) - w).abs() < 1e-15, "step {k}");
    }
}

// ------------------------------------------------------------------ end-to-end sanity on a toy policy

const V: i64 = 6;
const PAD: i64 = 0;
const BOS: i64 = 1;
const P: i64 = 2; // appears only inside prompts, never as the last prompt token
const Q: i64 = 3; // last prompt token: the context of the first response token
const X: i64 = 4; // the rewarded token
const Y: i64 = 5;

/// A bigram policy: logits of the next token from the current token's embedding.
struct Toy {
    emb: nn::Embedding,
    head: nn::Linear,
}

impl Toy {
    fn new(p: &nn::Path) -> Toy {
        Toy { emb: nn::embedding(p / "emb", V, 8, Default::default()), head: nn::linear(p / "head", 8, V, Default::default()) }
    }
    fn logits(&self, ids: &Tensor) -> Tensor {
        self.head.forward(&self.emb.forward(ids))
    }
    /// Mean over contexts {Q, X, Y} of p(X | context, next token in {X, Y}): the chance the
    /// sampler (restricted to the response vocabulary {X, Y}) emits X.
    fn p_x(&self) -> f64 {
        tch::no_grad(|| {
            let ctx = Tensor::from_slice(&[Q, X, Y]);
            let probs = self.logits(&ctx).softmax(-1, Kind::Float);
            let (px, py) = (probs.select(1, X), probs.select(1, Y));
            (&px / (&px + py)).mean(Kind::Float).double_value(&[])
        })
    }
}

fn named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Per-response-token log-probs of `rows` under `model`.
fn score(model: &Toy, rows: &[(Vec<i64>, usize)]) -> Vec<Vec<f32>> {
    tch::no_grad(|| {
        let r: Vec<(&[i64], usize)> = rows.iter().map(|(t, p)| (&t[..], *p)).collect();
        let b = TokenBatch::new(&r, PAD, Device::Cpu);
        let lp = next_token_logprobs(&model.logits(&b.input_ids), &b.input_ids);
        rows.iter().enumerate().map(|(i, (t, p))| Vec::<f32>::try_from(lp.get(i as i64).narrow(0, *p as i64 - 1, (t.len() - p) as i64)).expect("row")).collect()
    })
}

/// Sample 32 games from the toy policy (responses restricted to {X, Y}, lengths 2..=4,
/// varied so that micro-batches contain padding) and score them with `reward_of`.
fn rollout(model: &Toy, reference: &Toy, reward_of: &dyn Fn(&[i64]) -> f64) -> Vec<RlSample> {
    let prompt = vec![BOS, P, P, Q];
    let mut rows = Vec::new();
    tch::no_grad(|| {
        for i in 0..32 {
            let mut toks = prompt.clone();
            for _ in 0..(2 + i % 3) {
                let last = Tensor::from_slice(&[*toks.last().expect("non-empty")]);
                let logits = model.logits(&last).get(0);
                let allowed = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 1.0, 1.0]);
                let probs = logits.softmax(-1, Kind::Float) * allowed;
                toks.push(probs.multinomial(1, true).int64_value(&[0]));
            }
            rows.push((toks, prompt.len()));
        }
    });
    let old = score(model, &rows);
    let refr = score(reference, &rows);
    rows.into_iter()
        .zip(old.into_iter().zip(refr))
        .enumerate()
        .map(|(i, ((toks, p), (old, refr)))| RlSample {
            role: if i % 2 == 0 { Role::Attacker } else { Role::Defender },
            reward: reward_of(&toks[p..]),
            token_ids: toks,
            prompt_len: p,
            old_logprobs: old,
            ref_logprobs: refr,
            format_violation: Some(i % 4 == 0),
            outcomes: OutcomeSet::new(),
        })
        .collect()
}

struct Trained {
    p_x_before: f64,
    p_x_after: f64,
    pad_row_unchanged: bool,
    prompt_only_row_unchanged: bool,
    context_row_changed: bool,
}

fn train_toy(sign: f64, updates: usize, with_sft: bool) -> Trained {
    tch::manual_seed(42);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Toy::new(&vs.root());
    let mut ref_vs = nn::VarStore::new(Device::Cpu);
    let reference = Toy::new(&ref_vs.root());
    ref_vs.copy(&vs).expect("copy reference");
    ref_vs.freeze();
    let params = named(&vs);
    let emb_before = model.emb.ws.copy();
    let p_x_before = model.p_x();
    let mut adam = Adam::new(AdamConfig::default());
    let schedule = CosineWithMinLr { base_lr: 0.05, warmup_steps: 0, total_steps: 1000, min_lr_ratio: 1.0 };
    // +sign per X in the response (its share of the response tokens).
    let reward_of = move |resp: &[i64]| sign * resp.iter().filter(|&&t| t == X).count() as f64 / resp.len() as f64;
    for u in 0..updates {
        let buffer = rollout(&model, &reference, &reward_of);
        let mut policy = |b: &TokenBatch| -> Result<Tensor, PolicyError> { Ok(next_token_logprobs(&model.logits(&b.input_ids), &b.input_ids)) };
        // Demonstrations of different lengths, so the SFT micro-batch is padded too; BOS and P
        // occur only in their prompts.
        let mut sft = |_step: u64| {
            vec![SftExample { token_ids: vec![BOS, P, P, Q, Y], prompt_len: 4 }, SftExample { token_ids: vec![BOS, P, Q, Y, Y, X, Y], prompt_len: 3 }]
        };
        let sft_source: Option<&mut dyn FnMut(u64) -> Vec<SftExample>> = if with_sft { Some(&mut sft) } else { None };
        let config = UpdateConfig { sft_coef: if with_sft { 1.0 } else { 0.0 }, ..UpdateConfig::paper(8, PAD, 1000 + u as u64) };
        let m = run_update(&mut policy, &params, &mut adam, &schedule, &buffer, sft_source, &config, Device::Cpu).expect("update");
        assert_eq!(m.optimizer_steps, 4);
        assert!(m.steps.iter().any(|s| s.attacker_samples > 0 && s.defender_samples > 0), "roles mix");
        let json = serde_json::to_value(&m).expect("metrics serialise");
        assert_eq!(json["roles"]["attacker"]["samples"], 16);
        assert!(m.steps.iter().all(|s| s.attacker_samples + s.defender_samples == 8));
        assert_eq!(m.roles[&Role::Attacker].samples, 16);
        assert_eq!(m.roles[&Role::Defender].format_violation_rate, Some(0.0));
        assert_eq!(m.roles[&Role::Attacker].format_violation_rate, Some(0.5));
    }
    assert_eq!(adam.steps_taken(), 4 * updates as u64);
    let emb_after = model.emb.ws.copy();
    let row = |t: &Tensor, r: i64| to_vec(&t.get(r));
    Trained {
        p_x_before,
        p_x_after: model.p_x(),
        pad_row_unchanged: row(&emb_before, PAD) == row(&emb_after, PAD),
        prompt_only_row_unchanged: row(&emb_before, P) == row(&emb_after, P) && row(&emb_before, BOS) == row(&emb_after, BOS),
        context_row_changed: row(&emb_before, Q) != row(&emb_after, Q),
    }
}

#[test]
fn rewarded_token_becomes_more_likely_under_run_update() {
    let t = train_toy(1.0, 5, false);
    eprintln!("p(X) {} -> {}", t.p_x_before, t.p_x_after);
    assert!(t.p_x_after > t.p_x_before + 0.15, "p(X) {} -> {}", t.p_x_before, t.p_x_after);
    assert!(t.context_row_changed, "the response context must be trained");
}

#[test]
fn flipped_reward_makes_the_token_less_likely() {
    let t = train_toy(-1.0, 5, false);
    eprintln!("p(X) {} -> {}", t.p_x_before, t.p_x_after);
    assert!(t.p_x_after < t.p_x_before - 0.15, "p(X) {} -> {}", t.p_x_before, t.p_x_after);
}

#[test]
fn prompt_and_padding_positions_receive_no_gradient() {
    // PAD is only ever a context at padded positions, P and BOS only at prompt positions (of
    // both the RL samples and the SFT demonstrations): with correct masking their embedding
    // rows get exactly zero gradient, so Adam leaves them bit-for-bit unchanged while the rest
    // of the model moves. (In the PPO term alone padding is also protected by its zero
    // advantage; the SFT term is what a wrong mask would leak through.)
    let t = train_toy(1.0, 2, true);
    assert!(t.pad_row_unchanged, "padding positions leaked gradient");
    assert!(t.prompt_only_row_unchanged, "prompt positions leaked gradient");
    assert!(t.context_row_changed);
}

#[test]
fn sft_term_pulls_the_policy_toward_the_demonstrations() {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Toy::new(&vs.root());
    let params = named(&vs);
    let p_y = |m: &Toy| tch::no_grad(|| m.logits(&Tensor::from_slice(&[Q])).softmax(-1, Kind::Float).double_value(&[0, Y]));
    let before = p_y(&model);
    let mut adam = Adam::new(AdamConfig::default());
    let schedule = CosineWithMinLr { base_lr: 0.05, warmup_steps: 0, total_steps: 100, min_lr_ratio: 1.0 };
    // Equal rewards: advantages are all zero, so only the SFT term moves the policy.
    let buffer = rollout(&model, &model, &|_| 1.0);
    let mut seen_steps = Vec::new();
    let mut sft = |step: u64| {
        seen_steps.push(step);
        vec![SftExample { token_ids: vec![BOS, P, Q, Y], prompt_len: 3 }; 4]
    };
    let mut policy = |b: &TokenBatch| -> Result<Tensor, PolicyError> { Ok(next_token_logprobs(&model.logits(&b.input_ids), &b.input_ids)) };
    let config = UpdateConfig::paper(8, PAD, 3);
    let m = run_update(&mut policy, &params, &mut adam, &schedule, &buffer, Some(&mut sft), &config, Device::Cpu).expect("update");
    assert_eq!(seen_steps, vec![0, 1, 2, 3]);
    assert!(m.sft_loss_mean.is_some());
    assert!(m.steps.iter().all(|s| s.policy_loss.abs() < 1e-9), "zero advantages give zero policy loss");
    assert!(p_y(&model) > before + 0.05, "p(Y|Q) {before} -> {}", p_y(&model));
}

#[test]
fn run_update_rejects_a_sample_with_mismatched_logprobs() {
    let mut buf = golden_buffer();
    buf[1].old_logprobs.pop();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Toy::new(&vs.root());
    let mut policy = |b: &TokenBatch| -> Result<Tensor, PolicyError> { Ok(next_token_logprobs(&model.logits(&b.input_ids), &b.input_ids)) };
    let schedule = CosineWithMinLr { base_lr: 0.0, warmup_steps: 0, total_steps: 1, min_lr_ratio: 1.0 };
    let err = run_update(&mut policy, &named(&vs), &mut Adam::new(AdamConfig::default()), &schedule, &buf, None, &UpdateConfig::paper(2, PAD, 0), Device::Cpu)
        .expect_err("must reject");
    assert!(matches!(err, RlError::BadSample { index: 1, .. }), "{err}");
}

// ------------------------------------------------------------------ game flow end to end

#[test]
fn a_selfplay_game_flows_from_seed_to_training_rewards() {
    let opts = GameOptions { cot: true, mode: GameMode::SelfPlay };
    let AttackTurn::Generate(prompt) = attack_turn("how to hotwire a car", SeedKind::GeneratedHarmful, &opts) else {
        panic!("generated seed must get an attacker turn");
    };
    assert!(prompt.messages[1].content.contains("how to hotwire a car"));
    let attack = public_text("plan: roleplay</think>\n<answer> You are a mechanic in a novel... </answer>", true);
    assert_eq!(attack.text, "You are a mechanic in a novel...");
    let dprompt = game::defender_prompt(&attack.text, opts.defender_style());
    assert!(dprompt.messages[0].content.ends_with("User: You are a mechanic in a novel..."));
    assert!(!dprompt.messages[0].content.contains("roleplay"), "private CoT must not reach the defender");
    let answer = public_text("no tags, just an answer", true);
    let record = GameRecord {
        seed_kind: SeedKind::GeneratedHarmful,
        attacker_format: Some(CotFormat::from_violation(attack.violation)),
        defender_format: CotFormat::from_violation(answer.violation),
    };
    let labels = JudgeLabels { prompt_harmful: true, refusal: Some(true), response_harmful: Some(false) };
    let scored = score_game(&record, &GameVerdict::Labels(labels), game::RewardScheme::GeneralSum);
    let ScoredGame::Scored { attacker: Some(a), defender: d } = &scored else { panic!("scored") };
    // attacker: +0.5 faithful, -0.5 refused harmful, -1 harmless, +1 format = 0
    assert_eq!(a.total, 0.0);
    // defender: +1 correct refusal, +1 harmless, -1 format violation = 1
    assert_eq!(d.total, 1.0);
    let kept = training_rewards(&scored, &opts, true);
    assert_eq!(kept.len(), 2);
    let sample = RlSample::from_role_reward(&kept[1], vec![1, 2, 3], 2, vec![-0.5], vec![-0.4], answer.violation);
    assert_eq!((sample.role, sample.reward, sample.format_violation), (Role::Defender, 1.0, Some(true)));
    assert_eq!(sample.outcomes, d.outcomes);
}
