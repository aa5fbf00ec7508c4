"""What compression is judged by: size on disk, inference latency at a batch size, and the task metric.

Latency runs the model the way its command does: one forward pass over ``length`` tokens for a classifier or a
language model (scoring), greedy decoding of ``length`` tokens for a translator, one forward for images and
clips; on synthetic inputs of fixed shape (random token ids, grey pixels, noise), so runs compare on the same
work. The median of ``reps`` timed calls after warm-up, in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bigbatch.config import Config


def inference_call(model: nn.Module, cfg: Config, batch: int, length: int | None = None):
    """A no-argument function that runs one inference of ``batch`` inputs (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    m = cfg.model
    if cfg.task in ("vision", "audio"):
        if cfg.task == "vision":
            x = torch.randint(0, 256, (batch, m.image_size, m.image_size, m.channels or 1), generator=g,
                              dtype=torch.uint8)
        else:
            n = int(round((m.sample_rate or 16000) * (m.clip_seconds or 1.0)))
            x = torch.randint(-3000, 3000, (batch, n), generator=g, dtype=torch.int16)
        return lambda: model(x)
    length = min(length or 128, m.max_len)
    vocab = max(m.vocab_size, 8)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    if cfg.task == "translate":
        from bigbatch.nn.generate import translate

        steps = min(length, m.max_len - 1)
        return lambda: translate(model, ids, bos_id=1, eos_id=-1, max_new_tokens=steps)
    if cfg.task == "classify":
        mask = torch.ones_like(ids, dtype=torch.bool)
        return lambda: model(ids, mask)
    return lambda: model(ids)


def latency_ms(model: nn.Module, cfg: Config, batch: int, length: int | None = None, reps: int = 10,
               warmup: int = 2) -> float:
    """Median milliseconds of one inference (``inference_call``) in inference mode, on the CPU."""
    call = inference_call(model, cfg, batch, length)
    times = []
    with torch.inference_mode():
        for i in range(warmup + reps):
            start = time.perf_counter()
            call()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def model_bytes(ckpt: Path) -> int:
    """Size of the checkpoint's model.safetensors."""
    return (Path(ckpt) / "model.safetensors").stat().st_size


def parameter_count(model: nn.Module) -> int:
    """Parameters and int8 weights (stored values), shared tensors counted once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *(b for n, b in model.named_buffers() if n.endswith("qweight"))]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return total


METRIC = {"classify": "accuracy", "vision": "accuracy", "audio": "accuracy", "translate": "bleu", "lm": "perplexity"}


def measure_run(path: str | Path, split: str = "valid", max_examples: int | None = 2000,
                batches: tuple[int, ...] = (1, 32), reps: int = 10, evaluate: bool = True) -> dict:
    """Size, latency at each of ``batches`` and the task metric on ``split`` of a run (its best checkpoint)."""
    from bigbatch import load
    from bigbatch.evaluate.run import evaluate_run
    from bigbatch.train.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    model, cfg = load(ckpt)
    row = {"run": str(path), "size_mb": model_bytes(ckpt) / 1e6, "parameters": parameter_count(model)}
    for b in batches:
        row[f"latency_ms_b{b}"] = latency_ms(model, cfg, b, reps=reps)
    if evaluate:
        # on the CPU, where dynamic-int8 runs int8 and the latency is measured; no picture into the run
        result = evaluate_run(path, split, max_examples=max_examples, baseline=False, progress=False, device="cpu",
                              plots=False)
        metric = METRIC[cfg.task]
        row[metric] = result[metric]
        row["examples"] = result.get("examples")
    return row


def print_comparison(rows: list[dict], names: list[str], file=None) -> None:
    """One line per run: size, latency (and speed-up over the first), metric."""
    import sys

    file = file or sys.stderr
    first = rows[0]
    for name, row in zip(names, rows):
        parts = [f"{name:<10} {row['size_mb']:8.2f} MB"]
        for key in sorted(k for k in row if k.startswith("latency_ms_b")):
            speed = first[key] / row[key] if row[key] else float("nan")
            parts.append(f"batch {key[12:]}: {row[key]:8.2f} ms ({speed:.2f}x)")
        for metric in ("accuracy", "bleu", "perplexity"):
            if metric in row:
                parts.append(f"{metric} {row[metric]:.4f}")
        print("  ".join(parts), file=file)
