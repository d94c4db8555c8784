#!/usr/bin/env bash
# Runs every fuzz target of tests/it (tests named `fuzz_*` and the harness in tests/it/fuzz.rs)
# for longer than CI does: FUZZ_ITERS mutations each (default 200000), seed FUZZ_SEED.
# Usage: scripts/fuzz.sh [ITERS] [SEED]. A crashing input is saved under target/fuzz-crashes/.
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_ITERS="${1:-200000}" FUZZ_SEED="${2:-1}"
exec cargo test --release --test it -- fuzz --test-threads 1
