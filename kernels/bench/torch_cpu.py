# PyTorch on the CPU, for the record beside bulwark-kernels' CPU backend: the same MiniLM-L6
# architecture with random weights (speed does not depend on values), HF BertModel eager, masked
# mean pooling and L2 normalisation, float32.
# Usage: python3 torch_cpu.py [OUTPUT.json] [BATCH] [LEN]
import json
import sys
import time

import torch
from transformers import BertConfig, BertModel

dest = sys.argv[1] if len(sys.argv) > 1 else "torch_cpu.json"
B = int(sys.argv[2]) if len(sys.argv) > 2 else 32
L = int(sys.argv[3]) if len(sys.argv) > 3 else 128
cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512)
m = BertModel(cfg).eval()
ids = torch.randint(1000, 30000, (B, L))
mask = torch.ones_like(ids)


def run():
    with torch.inference_mode():
        h = m(input_ids=ids, attention_mask=mask).last_hidden_state
        e = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(e, dim=-1)


run()
times = []
for _ in range(5):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
times.sort()
t = times[len(times) // 2]
out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": B, "len": L,
       "ms_per_batch": t * 1e3, "sent_per_s": B / t}
print(json.dumps(out, indent=1))
json.dump(out, open(dest, "w"), indent=1)
