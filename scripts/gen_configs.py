#!/usr/bin/env python3
"""Regenerate configs/{attacker_only,defender_only,no_cot,more_steps,more_seeds,longer_turns,more_harmful}.yaml from pipeline.yaml,
so the ablations and tuning variants differ from the default run only in what their header
says (same budget, same evaluation). configs/gpu.yaml is written by hand. Run from the project root:
    python3 scripts/gen_configs.py
"""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE = (ROOT / "pipeline.yaml").read_text()
HEADER = BASE.splitlines()[0]

ABLATIONS = {
    "attacker_only": (
        "# Ablation (method.md §6, `no_defender_turn`): attacker-only RL against the frozen initial\n"
        "# model as a static defender (raw attack, thinking prefix). Differs from pipeline.yaml\n"
        "# only in rollout.mode (written by scripts/gen_configs.py).",
        [(r"  mode: selfplay .*", "  mode: attacker_only  # static defender: the frozen base model answers")],
    ),
    "defender_only": (
        "# Ablation (method.md §6, `no_attacker_turn`): defender-only RL against a static attacker:\n"
        "# every seed goes to the defender verbatim. Differs from pipeline.yaml only in rollout.mode\n"
        "# (the holdout attacker eval is kept, so eval@0 is the default run's, shared through the\n"
        "# store; written by scripts/gen_configs.py).",
        [
            (r"  mode: selfplay .*", "  mode: defender_only  # static attacker: seeds go to the defender verbatim"),
        ],
    ),
    "no_cot": (
        "# Ablation (method.md §6, `direct_chat_no_cot`): self-play without hidden chain of thought\n"
        "# (no <think>/<answer> format, no format reward; the SFT term, whose demonstrations are in\n"
        "# the reasoning format, is off). Differs from pipeline.yaml in rollout.cot and\n"
        "# update.sft_coef (written by scripts/gen_configs.py).",
        [
            (r"  cot: true", "  cot: false"),
            (r"  sft_coef: 1\.0 .*", "  sft_coef: 0.0         # the demonstrations are in the reasoning format"),
        ],
    ),
    "more_steps": (
        "# Tuning variant, measured and not adopted (docs/benchmarks.md, \"Twice the optimizer steps at\n"
        "# a constant lr\"): 6 optimizer steps per iteration (micro_batch_size 2) and no cosine decay\n"
        "# (min_lr_ratio 1.0). Differs from pipeline.yaml only there (written by\n"
        "# scripts/gen_configs.py).",
        [
            (r"  min_lr_ratio: 0\.1", "  min_lr_ratio: 1.0"),
            (r"  micro_batch_size: 4 .*", "  micro_batch_size: 2   # 6 optimizer steps per iteration at 8 seeds"),
        ],
    ),
    "more_seeds": (
        "# Tuning variant (docs/benchmarks.md, \"Twice the seeds\"): 16 seeds per iteration (twice\n"
        "# the RL samples, so the same 6 optimizer steps per iteration as more_steps.yaml but 4 samples\n"
        "# each) and no cosine decay (min_lr_ratio 1.0). Differs from pipeline.yaml only there\n"
        "# (written by scripts/gen_configs.py).",
        [
            (r"  seeds_per_iteration: 8", "  seeds_per_iteration: 16"),
            (r"  min_lr_ratio: 0\.1", "  min_lr_ratio: 1.0"),
        ],
    ),
    "longer_turns": (
        "# Tuning variant (docs/benchmarks.md, \"Longer turns\"): turns of up to 256 new tokens instead\n"
        "# of 128. At 128, 62% of the defender's training turns of more_seeds.yaml hit the cap, 38% inside\n"
        "# their reasoning, so they break the format however well it was learned. Differs from\n"
        "# pipeline.yaml only in rollout.max_new_tokens (written by scripts/gen_configs.py).",
        [
            (r"  max_new_tokens: 128  # CPU budget.*", "  max_new_tokens: 256  # twice the default's cap; the paper samples up to 2048 (method.md §1.5)"),
        ],
    ),
    "more_harmful": (
        "# Tuning variant (docs/benchmarks.md, \"More harmful seeds\"): 6 of the 8 seeds per iteration\n"
        "# harmful instead of 4. Plain HarmBench refusal never moved in self-play, while defender-only\n"
        "# (verbatim harmful seeds) raised it; the SFT term's benign demonstrations keep compliance in\n"
        "# the update whatever the seed mix. Differs from pipeline.yaml only in prep.harmful_fraction\n"
        "# (written by scripts/gen_configs.py).",
        [
            (r"  harmful_fraction: 0\.5", "  harmful_fraction: 0.75"),
        ],
    ),
}

for name, (header, subs) in ABLATIONS.items():
    text = BASE.replace(HEADER, header, 1)
    text = text.replace("sources_dir: .cache/", "sources_dir: ../.cache/").replace("path: .cache/", "path: ../.cache/")
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text, count=1)
        assert n == 1, (name, pattern)
    (ROOT / "configs" / f"{name}.yaml").write_text(text)
    print(f"wrote configs/{name}.yaml")
