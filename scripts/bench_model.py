"""Model runtime benchmark: this crate (tch) vs PyTorch/transformers on the same weights.

Run from the repository root, in a venv made from scripts/requirements-golden.txt:
    python scripts/bench_model.py
It (1) exports SmolLM2 from the GGUF to an HF directory with the Rust saver (unless
SMOLLM2_EXPORT_DIR already holds one), (2) runs `cargo bench --bench model` (release profile),
(3) runs the same workloads in transformers with the same thread count, (4) prints both JSON
results and the ratios (Rust / PyTorch; > 1 means the Rust runtime is faster).

Workloads: sampling at temperature 1, top_p 1, exactly 128 new tokens, batch 1 and 16 (left
padded chat prompts); training: batch 8 x 256 tokens, per-token log-probs, mean loss,
backward, AdamW step.
"""
import json, os, subprocess, sys, time
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = os.environ.get("SMOLLM2_EXPORT_DIR", "/tmp/smollm2_hf_export")
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
NEW_TOKENS = int(os.environ.get("BENCH_NEW_TOKENS", "128"))
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Explain photosynthesis in one paragraph.", "How do I sort a list in Python?"]


def rust_side():
    env = dict(os.environ, BENCH_THREADS=str(THREADS))
    out = subprocess.run(["cargo", "bench", "--bench", "model"], cwd=ROOT, env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


PARTS = os.environ.get("BENCH_PARTS", "sampling,training")


def torch_side():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(THREADS)
    tok = AutoTokenizer.from_pretrained(EXPORT)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(EXPORT, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % 4]}], tokenize=False,
                                     add_generation_prompt=True) for i in range(16)]
    sampling = {}
    for batch in ((1, 16) if "sampling" in PARTS else ()):
        enc = tok(texts[:batch], return_tensors="pt", padding=True, add_special_tokens=False)
        kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            torch.manual_seed(0)
            model.generate(**enc, max_new_tokens=8, min_new_tokens=8, **kw)
            start = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kw)
            secs = time.perf_counter() - start
        tokens = (out.shape[1] - enc.input_ids.shape[1]) * batch
        sampling[f"batch_{batch}_tokens_per_s"] = tokens / secs
        sampling[f"batch_{batch}_seconds"] = secs
    if "training" not in PARTS:
        return {"side": "pytorch-transformers", "threads": THREADS, "torch": torch.__version__, "sampling": sampling}
    model.train()
    g = torch.Generator().manual_seed(12345)
    ids = torch.randint(0, model.config.vocab_size, (8, 256), generator=g)
    mask = torch.zeros(8, 255)
    mask[:, 63:] = 1.0  # response = last 192 tokens, as the Rust side
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        logits = model(ids).logits[:, :-1].float()
        lp = logits.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        loss = -(lp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    secs = (time.perf_counter() - start) / 3
    return {"side": "pytorch-transformers", "threads": THREADS, "torch": torch.__version__,
            "sampling": sampling,
            "training": {"batch": 8, "seq_len": 256, "seconds_per_step": secs, "tokens_per_s": 8 * 256 / secs}}


if __name__ == "__main__":
    if not os.path.isfile(os.path.join(EXPORT, "model.safetensors")):
        subprocess.run(["cargo", "test", "--test", "it", "model::export_smollm2_hf_dir", "--", "--ignored",
                        "--exact"], cwd=ROOT, env=dict(os.environ, SMOLLM2_EXPORT_DIR=EXPORT), check=True)
    rust = rust_side() if "--torch-only" not in sys.argv else None
    pt = torch_side()
    print(json.dumps({"rust": rust, "torch": pt}, indent=1))
    if rust and "sampling" in PARTS:
        for k in ("batch_1_tokens_per_s", "batch_16_tokens_per_s"):
            print(f"sampling {k}: rust/torch = {rust['sampling'][k] / pt['sampling'][k]:.2f}x")
    if rust and "training" in PARTS:
        print(f"training tokens/s: rust/torch = {rust['training']['tokens_per_s'] / pt['training']['tokens_per_s']:.2f}x")
