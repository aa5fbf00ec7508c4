"""Data-parallel scaling on this machine, and the communication model for large clusters.

Measured (real processes through `bigbatch train --nproc N`, the default stdlib LM shape):
    1 process x T threads        the baseline at the same total threads as N processes x T/N
    N processes, ddp / fsdp      strong scaling: the same global batch split over N ranks
    N processes, ddp             weak scaling: N times the global batch (the same per-rank batch)
Tokens/s are medians over the logged windows after the first (compile / warm-up) one, and over
--reps alternated repetitions. Efficiency = tokens/s of N processes / tokens/s of 1 process at the
same total threads: 1.0 means distribution costs nothing on the same cores.

On paper (--model-only prints just this): bytes each GPU sends per optimiser step under DDP
(ring all-reduce of the gradients once per step) and FSDP (all-gather of the parameters for forward
and again for backward, per micro-batch, plus a reduce-scatter of the gradients), and the time that
takes at a stated link bandwidth, next to the compute time of the step.

    python benchmarks/scaling.py [--nproc 2] [--steps 40] [--reps 3] [--model-only]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(nproc: int, threads: int, parallel: str, global_rows: int, steps: int, work: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=work)) / "run"  # a fresh run each time (an old one would resume)
    sets = [f"train.max_steps={steps}", f"train.global_batch_size={global_rows}", "train.eval_every=0",
            "train.save_every=0", "train.sample_tokens=0", "train.log_every=5", f"train.parallel={parallel}",
            "optim.warmup_steps=10"]
    cmd = [sys.executable, "-m", "bigbatch", "train", "--run-dir", str(run_dir), "--no-progress"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r.get("split") is None][1:]
    return statistics.median(rates)


def comm_model(bandwidth_gbs: float, gpus: int, params: float, tokens_per_gpu: int, micro_batches: int,
               peak_flops: float = 989e12, mfu: float = 0.4) -> dict:
    """Bytes each GPU sends per step and the seconds at ``bandwidth_gbs`` GB/s, vs compute seconds.

    DDP: ring all-reduce of fp32 gradients, 2 (N-1)/N x 4P bytes, once per step (no_sync on the
    other micro-batches). FSDP with bf16 parameters: per micro-batch an all-gather for forward and one
    for backward, 2 x (N-1)/N x 2P; per step a reduce-scatter of fp32 gradients, (N-1)/N x 4P.
    """
    f = (gpus - 1) / gpus
    ddp = 2 * f * 4 * params
    fsdp = micro_batches * 2 * f * 2 * params + f * 4 * params
    keep = micro_batches * f * 2 * params + f * 4 * params  # train.fsdp_reshard=false: one all-gather per micro-batch
    compute = 6 * params * tokens_per_gpu / (peak_flops * mfu)
    return {"ddp_gb": ddp / 1e9, "fsdp_gb": fsdp / 1e9, "keep_gb": keep / 1e9, "ddp_s": ddp / (bandwidth_gbs * 1e9),
            "fsdp_s": fsdp / (bandwidth_gbs * 1e9), "compute_s": compute,
            "ddp_mem_gb": 16 * params / 1e9, "fsdp_mem_gb": 16 * params / gpus / 1e9}


def print_model() -> None:
    print("| model | GPUs | link | micro-batches | DDP GB/step | FSDP GB/step (fsdp_reshard=false) | DDP comm | "
          "FSDP comm | compute | state GB/GPU DDP | FSDP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, params in (("124M", 124e6), ("1.3B", 1.3e9)):
        for gpus, link, bw in ((8, "NVLink 300 GB/s", 300.0), (64, "IB 50 GB/s", 50.0)):
            for micro in (1, 8):
                m = comm_model(bw, gpus, params, tokens_per_gpu=micro * 8 * 1024, micro_batches=micro)
                print(f"| {name} | {gpus} | {link} | {micro} x 8 x 1024 tok | {m['ddp_gb']:.2f} | {m['fsdp_gb']:.2f} ({m['keep_gb']:.2f}) | "
                      f"{m['ddp_s'] * 1e3:.1f} ms | {m['fsdp_s'] * 1e3:.1f} ms | {m['compute_s'] * 1e3:.0f} ms | "
                      f"{m['ddp_mem_gb']:.1f} | {m['fsdp_mem_gb']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="total threads (default: all cores)")
    ap.add_argument("--global-rows", type=int, default=16, help="global batch in rows of 256 tokens")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model-only", action="store_true")
    args = ap.parse_args()
    if args.model_only:
        print_model()
        return
    n, t, g = args.nproc, args.threads, args.global_rows
    cases = {"1 process": (1, t, "none", g), f"{n} processes ddp (strong)": (n, t // n, "ddp", g),
             f"{n} processes fsdp (strong)": (n, t // n, "fsdp", g),
             "1 process, weak baseline": (1, t, "none", g * n), f"{n} processes ddp (weak)": (n, t // n, "ddp", g * n)}
    rates = {k: [] for k in cases}
    with tempfile.TemporaryDirectory() as work:
        for rep in range(args.reps):
            for name, (nproc, threads, parallel, rows) in cases.items():
                rates[name].append(measure(nproc, threads, parallel, rows, args.steps, Path(work)))
                print(f"rep {rep + 1}: {name}: {rates[name][-1]:,.0f} tokens/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"| setting | threads per process | global batch (tokens) | tokens/s (median of {args.reps}) | efficiency |")
    print("|---|---|---|---|---|")
    for name, (_, threads, _, rows) in cases.items():
        base = med["1 process, weak baseline"] if "weak" in name else med["1 process"]
        print(f"| {name} | {threads} | {rows * 256:,} | {med[name]:,.0f} | {med[name] / base:.2f} |")
    print()
    print_model()


if __name__ == "__main__":
    main()
