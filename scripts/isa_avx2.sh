#!/usr/bin/env bash
# Run a command with every CPU kernel this project uses held to AVX2, as on an AVX2-only
# machine of this kind (AMD EPYC): the decode kernel (SELF_REDTEAM_DECODE_ISA, see
# src/model/kernels.rs), ATen's vectorised ops (ATEN_CPU_CAPABILITY), MKL's sgemm
# (MKL_ENABLE_INSTRUCTIONS) and oneDNN (ONEDNN_MAX_CPU_ISA). On an AVX2-only CPU this changes
# nothing; on an AVX-512 one it exercises the code paths the other kind of machine takes.
# What it cannot emulate: MKL picks its own kernels per CPU vendor, so bytes on an Intel
# machine under this switch need not equal those of an AMD machine (README, Reproducibility).
#   scripts/isa_avx2.sh cargo test --test it -- model:: selfplay::
set -euo pipefail
export SELF_REDTEAM_DECODE_ISA=avx2
export ATEN_CPU_CAPABILITY=avx2
export MKL_ENABLE_INSTRUCTIONS=AVX2
export ONEDNN_MAX_CPU_ISA=AVX2
exec "$@"
