#!/usr/bin/env python3
"""ragpipe's chunker against LangChain's RecursiveCharacterTextSplitter, side by side.

Run from the crate root (one command; it builds and runs the Rust bench itself):

    python3 -m venv /var/tmp/lcvenv
    /var/tmp/lcvenv/bin/pip install langchain-text-splitters transformers tokenizers tiktoken
    bash ops/fetch-model.sh
    /var/tmp/lcvenv/bin/python benches/chunk_vs_langchain.py --tokenizer-dir models/all-MiniLM-L6-v2

Needs `langchain-text-splitters`, `transformers` (tokenizer classes only, no PyTorch),
`tokenizers` and `tiktoken` in a throw-away environment outside the repo.

Which tokenizer each side uses:
  * ragpipe counts in cl100k_base with tiktoken-rs (its default encoding).
  * LangChain "minilm": RecursiveCharacterTextSplitter.from_huggingface_tokenizer with the
    all-MiniLM-L6-v2 WordPiece tokenizer (local tokenizer.json), as the task asks, because
    Python tiktoken downloads its vocabulary on first use and this machine is offline.
  * LangChain "cl100k": the same splitter with len(tiktoken cl100k_base .encode_ordinary(text))
    as its length function (what from_tiktoken_encoder does). The vocabulary is loaded from the
    file bundled in the tiktoken-rs crate, so both sides count with the very same BPE.
All runs: chunk size 256 (--max-tokens), overlap 0, default separators, one core, best of
--repeat runs, tokenizers built before timing. "cpu" MB/s = input bytes / on-CPU time of the
process (Python: time.process_time; Rust: the thread's schedstat), which is one core's
throughput even when other work shares the machine; "wall" = input bytes / elapsed time.
Every chunk of every output is then counted with both tokenizers and the number over the
budget is reported for each.

With --minilm-fit 128,192,256 it instead runs ragpipe's default strategy for each file at
each budget and reports how many chunks fit all-MiniLM-L6-v2's window (256 word pieces, 254
after [CLS] and [SEP]); that is how the default max_tokens was chosen.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CRATE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(CRATE, "..", "shared", "corpus")
FILES = ["markdown/pandoc_MANUAL.md", "text/tinyshakespeare.txt"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer-dir", required=True, help="directory with the MiniLM tokenizer.json")
    p.add_argument("--cl100k", default=None, help="cl100k_base.tiktoken (default: the one inside tiktoken-rs)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--minilm-fit", default=None, help="comma-separated budgets: measure MiniLM window fit instead")
    p.add_argument("files", nargs="*", default=FILES, help="paths relative to the shared corpus")
    return p.parse_args()


def cl100k(path):
    """tiktoken's own cl100k_base, with its vocabulary read from a local file."""
    import tiktoken
    import tiktoken_ext.openai_public as public
    from tiktoken.load import load_tiktoken_bpe

    if path is None:
        found = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-0.12.*/assets/cl100k_base.tiktoken")))
        if not found:
            sys.exit("cl100k_base.tiktoken not found; run `cargo fetch` or pass --cl100k")
        path = found[-1]
    ranks = load_tiktoken_bpe(path)
    public.load_tiktoken_bpe = lambda *_args, **_kwargs: ranks  # the pattern and specials stay tiktoken's
    return tiktoken.Encoding(**public.cl100k_base())


def minilm(directory):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(directory, "tokenizer.json"))
    tok.backend_tokenizer.no_truncation()  # the shipped file truncates at 128
    return tok


def best_of(repeat, run):
    """Fastest (cpu seconds, wall seconds) over `repeat` runs, and the last output."""
    cpu, wall, out = float("inf"), float("inf"), None
    for _ in range(max(1, repeat)):
        c0, w0 = time.process_time(), time.perf_counter()
        out = run()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return (cpu, wall), out


def run_ragpipe(args, out_dir, max_tokens=None, repeat=None):
    cmd = ["cargo", "bench", "-q", "--bench", "chunk_throughput", "--",
           "--max-tokens", str(max_tokens or args.max_tokens), "--repeat", str(repeat or max(args.repeat, 5)),
           "--emit", out_dir, *args.files]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=CRATE, check=True)
    with open(os.path.join(out_dir, "throughput.json"), encoding="utf-8") as f:
        return json.load(f)


def load_chunks(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


MINILM_WINDOW = 254  # max_seq_length 256 minus [CLS] and [SEP]


def minilm_fit(args, hf):
    """Share of ragpipe chunks (default strategy per file) that fit MiniLM's window."""
    budgets = [int(b) for b in args.minilm_fit.split(",")]
    print(f"\nragpipe chunks that fit all-MiniLM-L6-v2's {MINILM_WINDOW} word pieces, by cl100k budget:")
    print(f"  {'file':<28}" + "".join(f"{b:>9}" for b in budgets))
    rows = {}
    for budget in budgets:
        with tempfile.TemporaryDirectory() as out_dir:
            run_ragpipe(args, out_dir, max_tokens=budget, repeat=1)
            for rel in args.files:
                name = os.path.basename(rel)
                strategy = "markdown" if name.endswith(".md") else "semantic"
                chunks = load_chunks(os.path.join(out_dir, f"{name}.{strategy}.jsonl"))
                pieces = [len(hf.backend_tokenizer.encode(t, add_special_tokens=False).ids) for t in chunks]
                rows.setdefault(name, []).append(sum(p <= MINILM_WINDOW for p in pieces) / len(pieces))
    for name, shares in rows.items():
        print(f"  {name:<28}" + "".join(f"{100 * s:>8.1f}%" for s in shares))


def main():
    args = parse_args()
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    enc = cl100k(args.cl100k)
    hf = minilm(args.tokenizer_dir)
    if args.minilm_fit:
        minilm_fit(args, hf)
        return
    count = {
        "cl100k": lambda t: len(enc.encode_ordinary(t)),
        "minilm": lambda t: len(hf.backend_tokenizer.encode(t, add_special_tokens=False).ids),
    }
    splitters = {
        "minilm": RecursiveCharacterTextSplitter.from_huggingface_tokenizer(hf, chunk_size=args.max_tokens, chunk_overlap=0),
        "cl100k": RecursiveCharacterTextSplitter(chunk_size=args.max_tokens, chunk_overlap=0, length_function=count["cl100k"]),
    }
    with tempfile.TemporaryDirectory() as out_dir:
        rust = run_ragpipe(args, out_dir)
        outputs = {}  # (file, label) -> list of chunk texts
        speed = {}
        for rel in args.files:
            name = os.path.basename(rel)
            with open(os.path.join(CORPUS, rel), encoding="utf-8") as f:
                text = f.read()
            mb = len(text.encode("utf-8")) / 1e6
            for tokenizer, splitter in splitters.items():
                (cpu, wall), chunks = best_of(args.repeat, lambda: splitter.split_text(text))
                label = f"langchain/{tokenizer}"
                speed[(name, label)] = (mb / cpu, mb / wall)
                outputs[(name, label)] = chunks
            for row in rust:
                if row["file"] == name:
                    label = f"ragpipe/{row['strategy']}" if row["strategy"] != "text-splitter" else "text-splitter"
                    speed[(name, label)] = (row["cpu_mb_per_s"], row["wall_mb_per_s"])
                    outputs[(name, label)] = load_chunks(os.path.join(out_dir, f"{name}.{row['strategy']}.jsonl"))
        report(args, speed, outputs, count)


def report(args, speed, outputs, count):
    print(f"\nThroughput at {args.max_tokens} tokens, one core (MB/s; ratio against the faster LangChain run):")
    files = sorted({f for f, _ in speed})
    for name in files:
        lc = [v for (f, k), v in speed.items() if f == name and k.startswith("langchain/")]
        fastest_cpu, fastest_wall = max(v[0] for v in lc), max(v[1] for v in lc)
        print(f"  {name:<24} {'cpu MB/s':>9} {'ratio':>6} {'wall MB/s':>10} {'ratio':>6}")
        for (f, label), (cpu, wall) in sorted(speed.items(), key=lambda kv: -kv[1][0]):
            if f == name:
                print(f"    {label:<22} {cpu:9.2f} {cpu / fastest_cpu:5.1f}x {wall:10.2f} {wall / fastest_wall:5.1f}x")
    print(f"\nEvery chunk counted with both tokenizers (budget {args.max_tokens}):")
    print(f"  {'file':<22} {'output':<22} {'chunks':>6} {'over cl100k':>11} {'over MiniLM':>11} {'max cl100k':>10} {'max MiniLM':>10} {'MiniLM/cl100k p50 p99':>22}")
    for (name, label), chunks in sorted(outputs.items()):
        c = [count["cl100k"](t) for t in chunks]
        m = [count["minilm"](t) for t in chunks]
        ratios = sorted(mm / cc for mm, cc in zip(m, c) if cc)
        p = lambda q: ratios[min(len(ratios) - 1, int(q * len(ratios)))] if ratios else 0.0
        print(f"  {name:<22} {label:<22} {len(chunks):>6} {sum(x > args.max_tokens for x in c):>11} {sum(x > args.max_tokens for x in m):>11} "
              f"{max(c, default=0):>10} {max(m, default=0):>10} {p(0.5):>14.2f} {p(0.99):>6.2f}")
    print("\n(ragpipe targets cl100k, LangChain/minilm targets MiniLM, LangChain/cl100k targets cl100k;"
          "\n an over-budget count under the other side's tokenizer is expected and only informative.)")


if __name__ == "__main__":
    main()
