# Accuracy of bulwark-kernels' embeddings against an independent reference on the real
# all-MiniLM-L6-v2 (prepared by prepare_model.py): per-sentence cosine must be >= 0.999.
#
# Reference: HF BertModel in float32 (GPU when present) with masked mean pooling and L2
# normalisation. Where PyTorch is not installed (a CPU build machine), a float64 numpy BERT
# written from the published architecture is used instead.
#
# Usage: python3 accuracy.py MODEL_DIR SENTENCES OUT.json EMB.json [EMB.json ...]
#   each EMB.json is the output of `bulwark-kernels-bench embed-dir` (one per backend / format).
import json
import math
import struct
import sys

import numpy as np
from tokenizers import Tokenizer

model_dir, sentences, dest, embs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
cfg = json.load(open(f"{model_dir}/config.json"))
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_padding()
tok.no_truncation()
lines = [l for l in open(sentences).read().splitlines() if l.strip()]
encs = [tok.encode(s) for s in lines]


def torch_reference():
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = BertModel(BertConfig.from_json_file(f"{model_dir}/config.json"), add_pooling_layer=False)
    state = {k.removeprefix("bert."): v.float() for k, v in load_file(f"{model_dir}/model.safetensors").items()}
    missing, _ = m.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    assert not missing, f"weights missing: {missing}"
    m = m.to(dev).eval()
    out = []
    with torch.inference_mode():
        for e in encs:
            ids = torch.tensor([e.ids[:512]], device=dev)
            tt = torch.tensor([e.type_ids[:512]], device=dev)
            h = m(input_ids=ids, token_type_ids=tt, attention_mask=torch.ones_like(ids)).last_hidden_state
            out.append(torch.nn.functional.normalize(h.mean(1), dim=-1)[0].double().cpu().numpy())
    return out, f"HF BertModel float32 on {dev}"


def numpy_reference():
    raw = open(f"{model_dir}/model.safetensors", "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    dt = {"F32": np.float32, "F16": np.float16}
    W = {}
    for k, v in hdr.items():
        if k == "__metadata__" or v["dtype"] not in dt:
            continue
        a, b = v["data_offsets"]
        W[k.removeprefix("bert.")] = np.frombuffer(body[a:b], dtype=dt[v["dtype"]]).astype(np.float64).reshape(v["shape"])
    H, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    d = H // nh
    erf = np.vectorize(math.erf)

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * W[p + ".weight"] + W[p + ".bias"]

    def lin(x, p):
        return x @ W[p + ".weight"].T + W[p + ".bias"]

    out = []
    for e in encs:
        ids, tt = np.array(e.ids[:512]), np.array(e.type_ids[:512])
        L = len(ids)
        x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:L] + W["embeddings.token_type_embeddings.weight"][tt]
        x = ln(x, "embeddings.LayerNorm")
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            q, k, v = (lin(x, f"{p}.attention.self.{n}").reshape(L, nh, d).transpose(1, 0, 2) for n in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(L, H)
            x = ln(lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            f = lin(x, f"{p}.intermediate.dense")
            f = 0.5 * f * (1 + erf(f / math.sqrt(2)))
            x = ln(lin(f, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        v = x.mean(0)
        out.append(v / np.linalg.norm(v))
    return out, "numpy float64 BERT"


try:
    ref, what = torch_reference()
except ImportError:
    ref, what = numpy_reference()

result = {"sentences": len(lines), "reference": what, "runs": {}}
ok = True
for path in embs:
    got = json.load(open(path))
    cos = [float(np.dot(r, e) / (np.linalg.norm(r) * np.linalg.norm(e))) for r, e in zip(ref, (np.array(x, dtype=np.float64) for x in got["embeddings"]))]
    worst = min(cos)
    result["runs"][path] = {"backend": got.get("backend"), "min_cosine": worst, "mean_cosine": sum(cos) / len(cos)}
    ok &= worst >= 0.999 and len(cos) == len(ref)
    print(f"{path} ({got.get('backend')}): min cosine {worst:.6f}, mean {sum(cos) / len(cos):.6f} over {len(cos)} sentences vs {what}")
result["pass"] = ok
json.dump(result, open(dest, "w"), indent=1)
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
