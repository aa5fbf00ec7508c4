"""The end of a run, on rank 0: plots, summary.json, the closing line, a sample or example translations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from bigbatch.config import Config
from bigbatch.tasks import get_task
from bigbatch.train.checkpoint import write_text_atomic
from bigbatch.train.metrics import MetricsLogger, write_run_plots


def report(cfg: Config, model: torch.nn.Module, data, valid, run_dir: Path, device, logger: MetricsLogger,
           state: dict, result: dict, extra: dict) -> dict:
    """Write plots and summary.json, print the closing lines; ``model`` is a plain (unsharded) module."""
    task = get_task(cfg.task)
    write_run_plots(run_dir)
    summary = {"run_dir": str(run_dir), "step": state["step"], "tokens": state["tokens"],
               **{f"valid_{k}": v for k, v in result.items()}, **extra}
    line = f"valid: loss {result['loss']:.4f} nats/target" + task.describe(result, data, valid, summary)
    if cfg.train.baseline:
        summary["baseline"] = _baseline(cfg, data.shard_dir)
        line += "; " + describe_baseline(summary["baseline"])
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    speed = f"{summary['tokens_per_s']:,.0f} tokens/s" if summary.get("tokens_per_s") else "no step trained"
    print(f"{line}; {speed}, wall {summary['wall_seconds']:.0f} s; run dir {run_dir}",
          file=sys.stderr)
    if extra.get("best_step") is not None:
        print(f"best: {extra['best_metric']} {extra['best_value']:.4f} at step {extra['best_step']} "
              f"(checkpoints/best; eval, classify, translate and generate use it)", file=sys.stderr)
    warmup = cfg.optim.warmup_steps
    if warmup and 0 < state["step"] < warmup:
        print(f"note: the run stopped at step {state['step']}, inside its {warmup} warm-up steps "
              f"(optim.warmup_steps): the learning rate never reached optim.lr={cfg.optim.lr:g}; give it more "
              "time or steps, or lower optim.warmup_steps", file=sys.stderr)
    task.after_report(cfg, model, data, valid, device)
    return summary


def _baseline(cfg: Config, shard_dir: Path) -> dict:
    from bigbatch.errors import UserError
    from bigbatch.evaluate.run import baseline_cached

    try:
        return baseline_cached(cfg, "valid", shard_dir)
    except UserError as e:  # an optional dependency missing: say so beside the model's numbers
        return {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - the trained run must still be reported; the failure is named
        return {"error": f"the baseline failed: {type(e).__name__}: {e}"}


def describe_baseline(base: dict) -> str:
    """One phrase for a baseline result: its method and metrics, or why there is none."""
    if "error" in base:
        return f"no baseline ({base['error']})"
    metrics = ", ".join(f"{k} {base[k]:.4f}" for k in ("accuracy", "macro_f1", "bleu", "chrf", "bits_per_byte")
                        if isinstance(base.get(k), float))
    return f"baseline {base.get('method', '?')}: {metrics}"
