"""Runs the official `openai` Python client against an OpenAI-compatible completions server
(this project's `serve`) and checks what the client sees, case by case: a plain and a batched
greedy completion with `usage` and `finish_reason` as vLLM reports them, the model list, and a
clear HTTP error (the status the client raises, naming the field) for each thing the server
does not do. `serve` must fail loudly where it cannot do what a client asked, never answer
something the client reads as success (a 200 plain-JSON reply to `stream=True` reads as an
empty stream in this client).

Usage: python openai_client.py BASE_URL MODEL
Prints one JSON line per case and exits 1 if any case did not behave as expected.
Used by tests/it/contracts.rs with the contracts venv (which has `openai`).
"""

import json
import sys

import openai


def main() -> int:
    base, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=120)
    failures = []

    def report(case, ok, detail):
        print(json.dumps({"case": case, "ok": ok, "detail": detail}), flush=True)
        if not ok:
            failures.append(case)

    # What the client reads from a greedy completion.
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0)
    c = r.choices[0]
    u = r.usage
    ok = (
        u is not None
        and u.prompt_tokens > 0
        and 0 < u.completion_tokens <= 4
        and u.total_tokens == u.prompt_tokens + u.completion_tokens
        and c.finish_reason == ("length" if u.completion_tokens == 4 else "stop")
        and isinstance(c.text, str)
    )
    report("completion", ok, {"text": c.text, "finish_reason": c.finish_reason, "usage": u.model_dump() if u else None})

    r = client.completions.create(model=model, prompt=["Hello", "One, two,"], max_tokens=3, temperature=0)
    ok = sorted(ch.index for ch in r.choices) == [0, 1] and r.usage is not None and r.usage.completion_tokens <= 6
    report("batch", ok, {"choices": len(r.choices), "usage": r.usage.model_dump() if r.usage else None})

    models = client.models.list()
    ids = [m.id for m in models.data]
    report("models", ids == [model], {"ids": ids})

    # Each unsupported request must raise the status the client maps to an error, naming
    # the field (OpenAI's `param`).
    refused = [
        ("stream", {"stream": True}, 400),
        ("n", {"n": 2}, 400),
        ("best_of", {"best_of": 2}, 400),
        ("stop", {"stop": ["\n"]}, 400),
        ("echo", {"echo": True}, 400),
        ("logprobs", {"logprobs": 1}, 400),
        ("temperature", {"temperature": 0.7}, 400),
    ]
    for field, extra, status in refused:
        args = {"model": model, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
        args.update(extra)
        try:
            out = client.completions.create(**args)
            if field == "stream":
                # A stream object that yields nothing is the silent failure this guards against.
                out = list(out)
            report(field, False, {"error": "accepted", "reply": str(out)[:300]})
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            param = body.get("param") if "param" in body else (body.get("error") or {}).get("param")
            ok = e.status_code == status and param == field
            report(field, ok, {"status": e.status_code, "param": param, "message": str(e)[:300]})

    try:
        client.completions.create(model=model + "-typo", prompt="Hi", max_tokens=2, temperature=0)
        report("unknown model", False, {"error": "accepted"})
    except openai.NotFoundError as e:
        report("unknown model", True, {"status": e.status_code})
    except openai.APIStatusError as e:
        report("unknown model", False, {"status": e.status_code, "message": str(e)[:300]})

    if failures:
        print(f"openai client: {len(failures)} case(s) not as expected: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
