#!/usr/bin/env python3
"""Helper of scripts/bench_cli.sh (a benchmark, not a test). Two subcommands:

  make-dvc-repo DIR --dvc PATH [--iterations 100]
      Create (or reuse, when still valid) a git + DVC repository at DIR whose dvc.yaml has
      5 stages per iteration shaped like our plan (prep, rollout, judge, update, eval: each
      stage has 1-2 deps on earlier outs or on a git-tracked source file, and one small
      out), i.e. 500 stages at 100 iterations; run `dvc repro` once (about 18 min for 500
      stages on 2 busy cores: DVC's repro is superlinear in the stage count), commit, and
      check that `dvc status` prints "Data and pipelines are up to date.".

  measure --reps N [--warmup 1] CASE...
      CASE is "VERB|STORE|COMMAND" (COMMAND split with shlex). Each command runs warmup +
      N times (stdout and stderr to /dev/null; stderr kept for the error message), end to
      end wall time with time.perf_counter around subprocess.run (process start included).
      The case whose VERB is "dvc-status" is the reference of the x_faster column
      (dvc median / our median). Exits non-zero when any run fails.

Environment of every DVC call (set here, inherited by measured commands too): analytics off
(DVC_NO_ANALYTICS=1), DVC_SITE_CACHE_DIR inside the repo's .dvc/tmp (set by the caller)."""
import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

UP_TO_DATE = "Data and pipelines are up to date."
STAGES = ("prep", "rollout", "judge", "update", "eval")


def die(msg):
    print(f"bench_cli_dvc.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def dvc_env(repo):
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("DVC_SITE_CACHE_DIR", os.path.join(repo, ".dvc", "tmp", "site-cache"))
    return env


def run(cmd, cwd, env, what):
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        die(f"{what} failed (exit {p.returncode}): {shlex.join(cmd)}\n{p.stdout[-4000:]}")
    return p.stdout


def dvc_yaml(iterations):
    """One chain per iteration, like our plan: prep@i <- dataset; rollout@i <- prep@i,
    policy (update@i-1 or base); judge@i <- rollout@i; update@i <- judge@i, update@i-1 (or
    base); eval@i <- update@i. Outputs are fixed-size (name + checksum of the deps)."""
    lines = ["stages:"]
    for i in range(1, iterations + 1):
        prev = f"out/update_{i - 1}.txt" if i > 1 else "src/base.txt"
        deps = {
            "prep": ["src/dataset.txt"],
            "rollout": [f"out/prep_{i}.txt", prev],
            "judge": [f"out/rollout_{i}.txt"],
            "update": [f"out/judge_{i}.txt", prev],
            "eval": [f"out/update_{i}.txt"],
        }
        for s in STAGES:
            name = f"{s}_{i}"
            out = f"out/{name}.txt"
            d = deps[s]
            lines.append(f"  {name}:")
            lines.append(f"    cmd: echo {name} > {out} && cat {' '.join(d)} | cksum >> {out}")
            lines.append("    deps:")
            lines += [f"      - {x}" for x in d]
            lines.append("    outs:")
            lines.append(f"      - {out}")
    return "\n".join(lines) + "\n"


def dvc_status(dvc, repo):
    p = subprocess.run([dvc, "--cd", repo, "status"], env=dvc_env(repo), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    return p.returncode, p.stdout


def make_dvc_repo(a):
    repo = os.path.abspath(a.dir)
    dvc = os.path.abspath(a.dvc)
    want = dvc_yaml(a.iterations)
    marker = os.path.join(repo, ".dvc", "tmp", "bench-complete")  # git- and dvc-ignored
    if os.path.exists(marker):
        try:
            same = open(os.path.join(repo, "dvc.yaml")).read() == want
        except OSError:
            same = False
        if same:
            rc, out = dvc_status(dvc, repo)
            if rc == 0 and out.strip() == UP_TO_DATE:
                print(f"dvc repo: reusing {repo} ({5 * a.iterations} stages, up to date)")
                return
        print(f"dvc repo: {repo} is not valid any more, recreating", file=sys.stderr)
    if os.path.exists(repo):
        shutil.rmtree(repo)
    os.makedirs(os.path.join(repo, "src"))
    os.makedirs(os.path.join(repo, "out"))
    env = dvc_env(repo)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "init.defaultBranch=main"]
    run(git + ["init", "-q"], repo, env, "git init")
    run([dvc, "init", "-q"], repo, env, "dvc init")
    run([dvc, "config", "core.analytics", "false"], repo, env, "dvc config core.analytics false")
    with open(os.path.join(repo, "src", "dataset.txt"), "w") as f:
        f.write("".join(f"row {k}\n" for k in range(200)))
    with open(os.path.join(repo, "src", "base.txt"), "w") as f:
        f.write("base policy\n")
    with open(os.path.join(repo, "dvc.yaml"), "w") as f:
        f.write(want)
    t0 = time.perf_counter()
    run([dvc, "repro", "-q"], repo, env, "dvc repro")
    print(f"dvc repo: dvc repro of {5 * a.iterations} stages took {time.perf_counter() - t0:.1f} s")
    run(git + ["add", "-A"], repo, env, "git add")
    run(git + ["commit", "-q", "-m", "bench"], repo, env, "git commit")
    rc, out = dvc_status(dvc, repo)
    if rc != 0 or out.strip() != UP_TO_DATE:
        die(f"`dvc status` in {repo} does not say {UP_TO_DATE!r} after repro (exit {rc}):\n{out[-4000:]}")
    open(marker, "w").close()
    print(f"dvc repo: created {repo} ({5 * a.iterations} stages, up to date)")


def measure(a):
    cases = []
    for c in a.cases:
        parts = c.split("|", 2)
        if len(parts) != 3:
            die(f"bad case {c!r}: want VERB|STORE|COMMAND")
        cases.append((parts[0], parts[1], shlex.split(parts[2])))
    times = {}
    for verb, store, cmd in cases:
        ts = []
        for k in range(a.warmup + a.reps):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = time.perf_counter() - t0
            if p.returncode != 0:
                err = p.stderr.decode(errors="replace")[-3000:]
                die(f"{verb} on store {store} failed (exit {p.returncode}): {shlex.join(cmd)}\n{err}")
            if k >= a.warmup:
                ts.append(dt * 1000.0)
        times[(verb, store)] = ts
    ref = [v for (verb, _), v in times.items() if verb == "dvc-status"]
    ref_med = statistics.median(ref[0]) if ref else None
    wv = max(len("verb"), *(len(v) for v, _, _ in cases))
    ws = max(len("store"), *(len(s) for _, s, _ in cases))
    print(f"{'verb':<{wv}}  {'store':<{ws}}  {'median_ms':>9}  {'min_ms':>8}  x_faster_than_dvc_status")
    for verb, store, _ in cases:
        ts = times[(verb, store)]
        med = statistics.median(ts)
        x = f"{ref_med / med:.2f}" if ref_med else "-"
        print(f"{verb:<{wv}}  {store:<{ws}}  {med:>9.1f}  {min(ts):>8.1f}  {x}")
    if ref_med is not None:
        print(f"dvc status (500 stages) median: {ref_med:.1f} ms over {a.reps} runs")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-dvc-repo")
    m.add_argument("dir")
    m.add_argument("--dvc", required=True)
    m.add_argument("--iterations", type=int, default=100)
    m.set_defaults(func=make_dvc_repo)
    t = sub.add_parser("measure")
    t.add_argument("--reps", type=int, default=10)
    t.add_argument("--warmup", type=int, default=1)
    t.add_argument("cases", nargs="+")
    t.set_defaults(func=measure)
    a = ap.parse_args()
    if getattr(a, "reps", 1) < 1:
        die("--reps must be >= 1")
    a.func(a)


if __name__ == "__main__":
    main()
