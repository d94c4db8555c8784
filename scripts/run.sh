#!/usr/bin/env bash
# The README's pipeline command: set up, build, then run the default pipeline.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release
exec target/release/self-redteam run "$@"
