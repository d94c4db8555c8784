#!/usr/bin/env bash
# The README's test command: set up, then run every test.
# Besides scripts/setup.sh it installs the two inference-engine environments the engine tests
# use (each once, ~6 GB, a few minutes; quick when present): a live vLLM CPU build
# (scripts/vllm.sh, tests/it/vllm_live.rs) and SGLang's and vLLM's own request code
# (scripts/contracts.sh, tests/it/contracts.rs). SELF_REDTEAM_SKIP_ENGINES=1 skips both the
# installs and those tests (they say so), for a quick run on a machine without them. The Slurm
# tests (tests/it/slurm.rs) start their own cluster with scripts/slurm.sh, which installs its
# packages when missing (root); SELF_REDTEAM_SKIP_SLURM=1 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${SELF_REDTEAM_SKIP_ENGINES:-}" != 1 ]; then
  scripts/vllm.sh install
  scripts/contracts.sh setup
fi
cargo test "$@"
