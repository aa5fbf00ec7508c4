"""`bigbatch bench`: this machine's matmul peak, and a config's training throughput and MFU."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time

import torch

from bigbatch.config import Config
from bigbatch.train.setup import resolve_device


def matmul_peak(device: str = "auto", dtype: str = "fp32", n: int = 2048, reps: int = 10) -> dict:
    """Median FLOP/s of square n x n matrix products (2n³ FLOPs each) on ``device``."""
    dev = resolve_device(device)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=dev, dtype=torch_dtype)
    b = torch.randn(n, n, device=dev, dtype=torch_dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync()
        rates.append(2 * n**3 / (time.perf_counter() - start))
    threads = torch.get_num_threads() if dev.type == "cpu" else None
    return {"peak_flops": statistics.median(rates), "device": str(dev), "dtype": dtype, "n": n, "threads": threads}


def throughput(cfg: Config, steps: int = 20, peak: float | None = None, progress: bool = False) -> dict:
    """Train ``steps`` steps of ``cfg`` in a temporary run directory; tokens/s of the last steps and MFU
    against ``peak`` (measured with matmul_peak when not given, so CPU runs get an MFU too)."""
    if peak is None:
        peak = matmul_peak(cfg.train.device, "fp32" if cfg.train.precision == "fp32" else cfg.train.precision)["peak_flops"]
    train_cfg = dataclasses.replace(cfg.train, max_steps=steps, eval_every=0, save_every=0, sample_tokens=0,
                                    max_time_s=None, max_tokens=None, epochs=None, eval_every_s=None, baseline=False,
                                    log_every=max(1, steps // 4), peak_flops=peak)
    warmup = cfg.optim.warmup_steps
    optim = dataclasses.replace(cfg.optim, warmup_steps=None if warmup is None else min(warmup, steps // 2))
    from bigbatch.train.loop import train
    from bigbatch.train.metrics import read_metrics

    with tempfile.TemporaryDirectory(prefix="bigbatch-bench-") as run_dir:
        train(dataclasses.replace(cfg, train=train_cfg, optim=optim), run_dir, progress=progress)
        rows = [r for r in read_metrics(f"{run_dir}/metrics.jsonl") if "split" not in r and "skipped" not in r]
    steady = rows[1:] or rows  # the first window includes warm-up of kernels and caches
    tps = statistics.median(r["tokens_per_s"] for r in steady)
    mfu = statistics.median(r["mfu"] for r in steady) if steady[0]["mfu"] is not None else None
    return {"tokens_per_s": tps, "mfu": mfu, "peak_flops": peak, "steps": steps}
