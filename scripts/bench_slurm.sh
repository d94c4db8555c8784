#!/usr/bin/env bash
# The Slurm executor's overhead per node, measured against the local executor in the same
# run: the tiny pipeline (tests/fixtures/tiny.yaml) into two empty stores, once with
# `run` (a child process per node) and once with `run --executor slurm` on a single-node
# Slurm started by scripts/slurm.sh, then (slurm − local) / nodes. Prints both times, the
# ratio and the overhead per node; checks that both stores hold the same keys and digests.
#
#   scripts/bench_slurm.sh            # needs `cargo build` done, and root or slurm-wlm+munge
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/debug/self-redteam"
[ -x "$BIN" ] || { echo "bench_slurm.sh: $BIN missing: run cargo build" >&2; exit 2; }
WORK="$(mktemp -d /tmp/srt-bench-XXXXXX)"
CLUSTER="$WORK/c"
chmod a+x "$WORK" # munged (user munge) must reach the cluster dir
trap '"$ROOT/scripts/slurm.sh" down "$CLUSTER" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
"$ROOT/scripts/slurm.sh" up "$CLUSTER" >/dev/null
export SLURM_CONF="$CLUSTER/slurm.conf"
CFG="$WORK/tiny.yaml"
sed "s#\.\./\.\./\.cache#$ROOT/.cache#g" "$ROOT/tests/fixtures/tiny.yaml" >"$CFG"
printf 'slurm:\n  resources:\n    default: {cpus: 1}\n' >>"$CFG"

calc() { python3 -c "print($1)"; }
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); calc "$t1 - $t0"; }
t_local=$(seconds "$BIN" --config "$CFG" --store "$WORK/local" run)
t_slurm=$(seconds "$BIN" --config "$CFG" --store "$WORK/slurm" run --executor slurm)
nodes=$("$BIN" --config "$CFG" --store "$WORK/local" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))')
same=$(for s in local slurm; do "$BIN" --config "$CFG" --store "$WORK/$s" status --json |
  python3 -c 'import json,sys; print(sorted((n["name"], n["key"], n["content_digest"]) for n in json.load(sys.stdin)["nodes"]))'; done | uniq | wc -l)
[ "$same" = 1 ] || { echo "bench_slurm.sh: the two stores differ" >&2; exit 1; }
printf 'tiny pipeline, %s nodes, --jobs 1, poll 1 s\n' "$nodes"
printf 'local executor: %.1f s\nslurm executor: %.1f s (%.2fx)\n' "$t_local" "$t_slurm" "$(calc "$t_slurm / $t_local")"
printf 'overhead per node: %.2f s (submit, schedule, poll)\n' "$(calc "($t_slurm - $t_local) / $nodes")"
printf 'stores: equal keys and content digests\n'
