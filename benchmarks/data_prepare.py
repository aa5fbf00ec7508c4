"""Prepare throughput: `bigbatch prepare` with 2 workers vs Hugging Face datasets .map(batched=True, num_proc=2).

Both tokenise the same >= 1 GB JSONL corpus with the same BPE tokenizer (a tokenizers.Tokenizer
trained once on a sample). The corpus is real text: the interpreter's standard library, its lines
shuffled and regrouped into ~2 KB documents, repeated until the size is reached.

    python benchmarks/data_prepare.py [--gb 1.0] [--workdir /tmp/bigbatch-bench]
"""

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from bigbatch.data.builtin import python_stdlib
from bigbatch.data.prepare import PrepareSpec, prepare
from bigbatch.data.sources import Fields
from bigbatch.data.tokenizer import train_tokenizer


def make_corpus(path: Path, gigabytes: float) -> Path:
    """JSONL of ~2 KB documents of shuffled standard-library lines, >= ``gigabytes`` GB."""
    target = int(gigabytes * 1e9)
    if path.exists() and path.stat().st_size >= target:
        return path
    lines = [line for _, rec in python_stdlib("lm") for line in rec["text"].splitlines() if line.strip()]
    rng = random.Random(0)
    written = 0
    with open(path, "w") as f:
        while written < target:
            rng.shuffle(lines)
            doc, size = [], 0
            for line in lines:
                doc.append(line)
                size += len(line) + 1
                if size >= 2000:
                    row = json.dumps({"text": "\n".join(doc)}) + "\n"
                    f.write(row)
                    written += len(row)
                    doc, size = [], 0
                    if written >= target:
                        break
    return path


def bench_bigbatch(corpus: Path, tokenizer: Path, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    spec = PrepareSpec(source=str(corpus), task="lm", tokenizer=str(tokenizer), fields=Fields(task="lm"),
                       workers=workers, shard_tokens=64_000_000)
    start = time.perf_counter()
    prepare(spec, out, progress=False)
    return time.perf_counter() - start


def bench_hf(corpus: Path, tokenizer: Path, cache: Path, workers: int) -> tuple[float, float]:
    import datasets
    from tokenizers import Tokenizer

    shutil.rmtree(cache, ignore_errors=True)
    datasets.disable_progress_bars()
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(cache))
    loaded = time.perf_counter()
    tok = Tokenizer.from_file(str(tokenizer))

    def encode(batch):
        return {"ids": [e.ids for e in tok.encode_batch(batch["text"], add_special_tokens=False)]}

    ds.map(encode, batched=True, num_proc=workers, remove_columns=["text"])
    return loaded - start, time.perf_counter() - loaded


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/bigbatch-bench")
    args = p.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(work / f"corpus-{args.gb:g}gb.jsonl", args.gb)
    size_mb = corpus.stat().st_size / 1e6
    tok_path = work / "bpe-8000.json"
    if not tok_path.exists():
        sample = (json.loads(line)["text"] for _, line in zip(range(10_000), open(corpus)))
        train_tokenizer("bpe", sample, 8000).save(work)
        (work / "tokenizer.json").rename(tok_path)
    print(f"corpus {corpus} ({size_mb:,.0f} MB), BPE 8000, {args.workers} workers", file=sys.stderr)
    ours = bench_bigbatch(corpus, tok_path, work / "shards", args.workers)
    hf_load, hf_map = bench_hf(corpus, tok_path, work / "hf-cache", args.workers)
    print("| pipeline | seconds | MB/s | vs bigbatch |\n|---|---|---|---|")
    print(f"| bigbatch prepare ({args.workers} workers, read + tokenise + shards) | {ours:.1f} | {size_mb / ours:.1f} | 1.00x |")
    print(f"| HF datasets .map(num_proc={args.workers}) only | {hf_map:.1f} | {size_mb / hf_map:.1f} | {ours / hf_map:.2f}x |")
    total = hf_load + hf_map
    print(f"| HF datasets load_dataset + .map | {total:.1f} | {size_mb / total:.1f} | {ours / total:.2f}x |")


if __name__ == "__main__":
    main()
