#!/usr/bin/env bash
# Benchmark of `status` on a store with 100 iterations (not a timed test). Two numbers:
# 1. benches/status.rs: Engine::resolve on a store where all 504 nodes of a 100-iteration
#    plan are cached (placeholder outputs for stages not built yet);
# 2. the CLI `status --iterations 100` end to end (process start included) on a store
#    filled by really running the tiny pipeline for 100 iterations (every stage runs; about
#    35 min on 2 cores). scripts/bench_cli.sh times all the audit verbs against dvc.
# Dev profile unless PROFILE=release.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${PROFILE:-dev}"
cargo bench --profile "$PROFILE" --bench status 2>/dev/null
cargo build --profile "$PROFILE" --bins 2>/dev/null
dir=debug; [ "$PROFILE" = release ] && dir=release
BIN="${CARGO_TARGET_DIR:-target}/$dir/self-redteam"
STORE="$(mktemp -d)"
trap 'rm -rf "$STORE"' EXIT
CFG=tests/fixtures/tiny.yaml
"$BIN" --config "$CFG" --store "$STORE" run --iterations 100 >/dev/null 2>&1
nodes=$("$BIN" --config "$CFG" --store "$STORE" status --iterations 100 --json | grep -c '"name"')
arts=$(find "$STORE" -name manifest.json | wc -l)
echo "store: $arts artifacts; plan: $nodes nodes (100 iterations)"
best=""
for i in 1 2 3 4 5; do
  s=$(date +%s.%N)
  "$BIN" --config "$CFG" --store "$STORE" status --iterations 100 >/dev/null
  e=$(date +%s.%N)
  t=$(echo "$e - $s" | bc -l)
  echo "status run $i: ${t}s"
  if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
done
echo "status (100 iterations, profile $PROFILE): best ${best}s"
