#!/usr/bin/env bash
# Benchmark (NOT a timed test: nothing here passes or fails on a time) of the audit verbs of
# the CLI, for the issue "one process per stage / libtorch-free CLI". It measures the end to
# end wall time (process start included: this is what the libtorch-free CLI changes) of
#   status, log, show REF, lineage REF
# on two stores, and of `dvc status` (DVC 3.67.1) on an equivalent 500-stage dvc.yaml, all in
# the same run, and prints per command the median and min over REPS runs (after 1 warm-up
# run) and how many times faster than `dvc status` it is (dvc median / our median).
# Targets of the issue: each of our verbs under 50 ms end to end; the ratio vs `dvc status`
# goes in the README. Results depend on the machine and on its load: run it on an idle
# machine and compare numbers of one run only.
#
# Stores:
#   default: STORE_DEFAULT (a full default run of pipeline.yaml, read-only here: only audit
#            verbs run on it, never run/gc);
#   100-it:  STORE_100, filled by really running tests/fixtures/tiny.yaml for 100 iterations
#            (every stage runs on a tiny random model; 504 nodes, ~35 min on 2 busy cores). Filled only when
#            `status --iterations 100` does not say every node is cached; the fill is timed.
# DVC: a venv with dvc==3.67.1 from PyPI (created when missing) and a git + dvc repo with
# 100 iterations x 5 stages shaped like our plan (scripts/bench_cli_dvc.py make-dvc-repo),
# reproduced once (`dvc repro`, ~18 min for 500 stages on 2 cores) so that `dvc status` says
# "Data and pipelines are up to date."; reused while it still does. Analytics off, DVC's site cache inside the repo (.dvc/tmp).
#
# Run:   scripts/bench_cli.sh
# Env:   BIN            binary (default target/debug/self-redteam, built by `cargo build`;
#                       nothing is built here; its self-redteam-compute must be beside it
#                       only to fill the 100-iteration store)
#        STORE_DEFAULT  default store (default artifacts/, what scripts/run.sh fills), CONFIG_DEFAULT its pipeline
#                       file (default pipeline.yaml), SHOW_DEFAULT / LINEAGE_DEFAULT the refs
#                       (default update@3 / eval@4)
#        STORE_100      100-iteration store (default target/bench/store-100)
#        BENCH_VENV     venv with dvc (default target/bench/venv)
#        DVC_REPO       the 500-stage dvc repo (default target/bench/dvc-500)
#        REPS           measured runs per command (default 10; plus 1 warm-up)
# Exits non-zero with a message when any command fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
HELPER="$ROOT/scripts/bench_cli_dvc.py"

if [ -z "${BIN:-}" ]; then
  BIN=target/debug/self-redteam
fi
[ -x "$BIN" ] || { echo "bench_cli.sh: binary $BIN not found (set BIN or build it)" >&2; exit 1; }
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
STORE_DEFAULT="${STORE_DEFAULT:-artifacts}"
CONFIG_DEFAULT="${CONFIG_DEFAULT:-pipeline.yaml}"
SHOW_DEFAULT="${SHOW_DEFAULT:-update@3}"
LINEAGE_DEFAULT="${LINEAGE_DEFAULT:-eval@4}"
STORE_100="${STORE_100:-target/bench/store-100}"
CONFIG_100=tests/fixtures/tiny.yaml
N100=100
BENCH_VENV="${BENCH_VENV:-target/bench/venv}"
DVC_REPO="${DVC_REPO:-target/bench/dvc-500}"
REPS="${REPS:-10}"
# Absolute from here on (the DVC steps run inside the repo).
STORE_DEFAULT="$(realpath -m "$STORE_DEFAULT")"; STORE_100="$(realpath -m "$STORE_100")"
BENCH_VENV="$(realpath -m "$BENCH_VENV")"; DVC_REPO="$(realpath -m "$DVC_REPO")"
export DVC_NO_ANALYTICS=1
export DVC_SITE_CACHE_DIR="$DVC_REPO/.dvc/tmp/site-cache"

[ -d "$STORE_DEFAULT" ] || { echo "bench_cli.sh: default store $STORE_DEFAULT not found" >&2; exit 1; }
echo "binary: $BIN"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- 100-iteration store -------------------------------------------------------------------
s100=("$BIN" --config "$CONFIG_100" --store "$STORE_100")
complete_100() {
  local out
  out="$("${s100[@]}" status --iterations "$N100" 2>/dev/null)" || return 1
  [ -n "$out" ] && ! awk '$2 != "cached" { bad = 1 } END { exit !bad }' <<<"$out"
}
if complete_100; then
  echo "store-100: $STORE_100 complete (every node of $N100 iterations cached)"
else
  echo "store-100: filling $STORE_100: ${s100[*]} run --iterations $N100"
  log="$(mktemp)"
  t0=$(date +%s%N)
  if ! nice -n 10 "${s100[@]}" run --iterations "$N100" >"$log" 2>&1; then
    echo "bench_cli.sh: filling the 100-iteration store failed; last lines:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  t1=$(date +%s%N)
  rm -f "$log"
  echo "store-100: filled in $(( (t1 - t0) / 1000000000 )) s"
  complete_100 || { echo "bench_cli.sh: $STORE_100 still not complete after run; status:" >&2; "${s100[@]}" status --iterations "$N100" | grep -v ' cached ' | head -20 >&2; exit 1; }
fi

# --- DVC -----------------------------------------------------------------------------------
DVC="$BENCH_VENV/bin/dvc"
if [ ! -x "$DVC" ] || [ "$("$DVC" --version 2>/dev/null)" != 3.67.1 ]; then
  echo "dvc: creating $BENCH_VENV with dvc==3.67.1"
  python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install -q dvc==3.67.1
fi
python3 "$HELPER" make-dvc-repo "$DVC_REPO" --dvc "$DVC" --iterations "$N100"

# --- measure -------------------------------------------------------------------------------
q() { printf '%q ' "$@"; }
d=(--config "$CONFIG_DEFAULT" --store "$STORE_DEFAULT")
h=(--config "$CONFIG_100" --store "$STORE_100")
it=(--iterations "$N100")
echo "timing: 1 warm-up + $REPS runs per command, end to end (process start included)"
echo
python3 "$HELPER" measure --reps "$REPS" --warmup 1 \
  "status|default|$(q "$BIN" "${d[@]}" status)" \
  "log|default|$(q "$BIN" "${d[@]}" log)" \
  "show $SHOW_DEFAULT|default|$(q "$BIN" "${d[@]}" show "$SHOW_DEFAULT")" \
  "lineage $LINEAGE_DEFAULT|default|$(q "$BIN" "${d[@]}" lineage "$LINEAGE_DEFAULT")" \
  "status|100-it|$(q "$BIN" "${h[@]}" status "${it[@]}")" \
  "log|100-it|$(q "$BIN" "${h[@]}" log "${it[@]}")" \
  "show update@$N100|100-it|$(q "$BIN" "${h[@]}" show "update@$N100" "${it[@]}")" \
  "lineage eval@$N100|100-it|$(q "$BIN" "${h[@]}" lineage "eval@$N100" "${it[@]}")" \
  "dvc-status|dvc-500|$(q "$DVC" --cd "$DVC_REPO" status)"
