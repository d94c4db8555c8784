#!/usr/bin/env python3
"""Copy a Hugging Face model directory with its embeddings untied, for vLLM (scripts/vllm.sh).

    python3 scripts/untie.py SRC_DIR DST_DIR

vLLM's in-place weight reload (`collective_rpc reload_weights`) of a model with
`tie_word_embeddings: true` (SmolLM2) loads the new input embeddings but keeps the output
head it started with. An untied copy has an explicit `lm_head.weight` (the bytes of
`model.embed_tokens.weight`) in model.safetensors and `tie_word_embeddings: false` in
config.json; the model computes the same function, and reloads of such copies are exact.
Start the server from an untied copy and reload only untied copies.

Works on the safetensors bytes directly (any dtype, standard library only): the header
gains one entry, the data one tensor at the end. The other files of SRC_DIR (tokenizer,
…) are copied. A directory that is already untied is copied as it is. DST_DIR must not exist.
"""
import json
import os
import shutil
import struct
import sys

EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


def untie_safetensors(src, dst):
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data_start = 8 + n
        if HEAD in header:
            return False
        if EMBED not in header:
            sys.exit(f"untie.py: {src} has no {EMBED}")
        e = header[EMBED]
        begin, end = e["data_offsets"]
        data_len = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        f.seek(data_start + begin)
        embed = f.read(end - begin)
        header[HEAD] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [data_len, data_len + len(embed)]}
        head = json.dumps(header, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
        with open(dst, "wb") as out:
            out.write(struct.pack("<Q", len(head)))
            out.write(head)
            f.seek(data_start)
            left = data_len
            while left:
                chunk = f.read(min(left, 1 << 24))
                if not chunk:
                    sys.exit(f"untie.py: {src} is shorter than its header says")
                out.write(chunk)
                left -= len(chunk)
            out.write(embed)
    return True


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    src, dst = sys.argv[1], sys.argv[2]
    if not os.path.isfile(os.path.join(src, "config.json")) or not os.path.isfile(os.path.join(src, "model.safetensors")):
        sys.exit(f"untie.py: {src}: no config.json and model.safetensors (sharded checkpoints are not handled)")
    if os.path.lexists(dst):
        sys.exit(f"untie.py: {dst} exists")
    tmp = dst.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in sorted(os.listdir(src)):
        p = os.path.join(src, name)
        if os.path.isfile(p) and name not in ("config.json", "model.safetensors"):
            shutil.copy2(p, os.path.join(tmp, name))
    if not untie_safetensors(os.path.join(src, "model.safetensors"), os.path.join(tmp, "model.safetensors")):
        shutil.copy2(os.path.join(src, "model.safetensors"), os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["tie_word_embeddings"] = False
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.rename(tmp, dst)


if __name__ == "__main__":
    main()
