"""Streaming loader: throughput against the trainer's appetite, peak memory as the data grows, resume cost.

1. tokens/s of PackedLMLoader (shuffled rows of 256 + 1 tokens, batches of 16) against the tokens/s
   that training the default model consumes (measured here too); target >= 20x.
2. peak RSS of a process that streams shuffled batches from a byte-level shard set of 1 GB and of
   4 GB (built by repeating the interpreter's standard library); target < 1 GB and flat.
3. resume cost: load_state_dict at position 10 and at position 10 million (same work: it is O(1)).

    python benchmarks/data_stream.py [--sizes 1,4] [--workdir /tmp/bigbatch-bench]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bigbatch.data.builtin import python_stdlib
from bigbatch.data.loader import PackedLMLoader
from bigbatch.data.prepare import PrepareSpec, prepare
from bigbatch.data.shards import ShardSet
from bigbatch.data.sources import Fields


def shard_set(work: Path, gigabytes: float) -> Path:
    """Byte-level shards of ~``gigabytes`` GB (uint16: 2 bytes per token): the standard library's files
    as ~64 KB JSONL documents, repeated until the size is reached."""
    corpus = work / f"stdlib-{gigabytes:g}gb.jsonl"
    if not corpus.exists():
        docs = [json.dumps({"text": rec["text"][i : i + 65536]}) + "\n" for _, rec in python_stdlib("lm")
                for i in range(0, len(rec["text"]), 65536)]
        target, written = gigabytes * 1e9 / 2 * 1.2, 0  # JSON escapes make the file ~1.2x the text
        with open(corpus, "w") as f:
            while written < target:
                for d in docs:
                    f.write(d)
                    written += len(d)
    spec = PrepareSpec(source=str(corpus), task="lm", fields=Fields(task="lm"), workers=2, shard_tokens=128_000_000)
    return prepare(spec, work / f"shards-{gigabytes:g}gb", progress=False)


def stream(shard_dir: str, batches: int) -> dict:
    """Run in a fresh process: stream ``batches`` shuffled batches, report tokens/s and peak RSS."""
    shards = ShardSet(shard_dir, "train", verify=False)
    loader = PackedLMLoader(shards, 256, 16, seed=0)
    start = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    seconds = time.perf_counter() - start
    # VmHWM: this process's own peak (ru_maxrss would carry over the parent's peak across fork + exec)
    rss_mb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
    size_gb = sum(s.n_tokens for s in shards.shards) * np.dtype(shards.dtype).itemsize / 1e9
    return {"tokens_per_s": batches * 16 * 256 / seconds, "peak_rss_mb": rss_mb, "size_gb": size_gb}


def trainer_tokens_per_s() -> float:
    import torch
    import torch.nn.functional as F

    from bigbatch.nn.models import CausalLM
    from bigbatch.presets import default_lm

    cfg = default_lm()
    model = CausalLM(cfg.model, vocab_size=259)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 259, (16, 257))
    times = []
    for _ in range(6):
        t = time.perf_counter()
        logits = model(x[:, :-1])
        F.cross_entropy(logits.reshape(-1, 259), x[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return 16 * 256 / sorted(times[1:])[2]


def resume_cost(shard_dir: Path) -> list[tuple[int, float]]:
    shards = ShardSet(shard_dir, "train", verify=False)
    out = []
    for position in (10, 10_000_000):
        loader = PackedLMLoader(shards, 256, 16, seed=0)
        state = dict(loader.state_dict(), global_position=min(position, loader.rows_per_epoch - 1))
        start = time.perf_counter()
        loader.load_state_dict(state)
        loader.next_batch()
        out.append((state["global_position"], time.perf_counter() - start))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1,4")
    p.add_argument("--batches", type=int, default=3000)
    p.add_argument("--workdir", default="/tmp/bigbatch-bench")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(stream(args.child, args.batches)))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [float(s) for s in args.sizes.split(",")]:
        shard_dir = shard_set(work, size)
        out = subprocess.run([sys.executable, __file__, "--child", str(shard_dir), "--batches", str(args.batches)],
                             capture_output=True, text=True, check=True)
        rows.append((shard_dir, json.loads(out.stdout)))
    trainer = trainer_tokens_per_s()
    print("| shard set | loader tokens/s | trainer tokens/s (default model) | ratio | peak RSS |\n|---|---|---|---|---|")
    for _, r in rows:
        print(f"| {r['size_gb']:.2f} GB | {r['tokens_per_s']:,.0f} | {trainer:,.0f} | "
              f"{r['tokens_per_s'] / trainer:,.0f}x | {r['peak_rss_mb']:,.0f} MB |")
    print("\n| resume at position | seconds |\n|---|---|")
    for position, seconds in resume_cost(rows[-1][0]):
        print(f"| {position:,} | {seconds * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
