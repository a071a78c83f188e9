#!/usr/bin/env python3
"""The PyTorch peer for benches/local_embed.rs: sentence-transformers on the same model files.

Install into a throw-away virtualenv outside the repo:
    python3 -m venv /var/tmp/stvenv && /var/tmp/stvenv/bin/pip install sentence-transformers

Modes:
    --inputs FILE   time model.encode on each named set of texts in FILE (JSON {"sets": {name: [texts]}},
                    written by the Rust bench) and print {"name": texts_per_second, ...} as JSON
    --reference OUT write the reference vectors tests/fixtures/minilm_reference.json
"""
import argparse
import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

REFERENCE_TEXTS = [
    "a dog runs in the park",
    "Quarterly revenue grew 15% year over year, driven by subscriptions.",
    "Ünïcödé, emoji 🚢 and CJK 東京 survive tokenizing.",
    "x",
    "The harbour master records every ship that enters the port, its cargo, its crew and its flag. " * 30,
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--inputs")
    parser.add_argument("--reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device="cpu")
    if args.reference:
        vectors = model.encode(REFERENCE_TEXTS, normalize_embeddings=True, batch_size=8)
        with open(args.reference, "w", encoding="utf-8") as f:
            json.dump({"model": args.model.rstrip("/").split("/")[-1], "max_seq_length": model.max_seq_length,
                       "texts": REFERENCE_TEXTS, "vectors": [[round(float(x), 7) for x in v] for v in vectors]}, f)
        return
    with open(args.inputs, encoding="utf-8") as f:
        sets = json.load(f)["sets"]
    results = {}
    for name, texts in sets.items():
        model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
        start = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
        results[name] = len(texts) / (time.perf_counter() - start)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
