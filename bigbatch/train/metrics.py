"""Metrics: one JSON object per line in metrics.jsonl, the same scalars in TensorBoard, PNG plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

# dense (no sparsity) peak FLOP/s per device by precision, from the vendors' data sheets
PEAK_FLOPS = {
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp32": 30e12},
}


def peak_flops(device: torch.device, precision: str, override: float | None = None) -> float | None:
    """Peak FLOP/s of a known accelerator, or None (MFU then reads as unknown, never a guess)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_FLOPS.items():
        if key in name:
            return table.get(precision, table["fp32"])
    return None


class MetricsLogger:
    """Appends rows to RUN_DIR/metrics.jsonl and scalars to RUN_DIR/tb/ (on rank 0: ``enabled``)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # drop rows the interrupted run wrote after the checkpoint we resume from
            rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_name(f".{self.path.name}.tmp")  # a kill now leaves the old log, never half of it
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        prefix = row.get("split", "train")
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a last line cut short by a killed process is left out."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i != len(lines) - 1:
                raise
    return rows


PANELS = {"loss": "loss (nats/token)", "lr": "learning rate", "throughput": "tokens/s"}


def _draw(ax, panel: str, run_dirs: list[Path]) -> None:
    for run_dir in run_dirs:
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
        train = [r for r in rows if "split" not in r and "skipped" not in r and r.get("loss") is not None]
        label = Path(run_dir).name
        steps = [r["step"] for r in train]
        if panel == "loss":
            ax.plot(steps, [r["loss"] for r in train], label=f"{label} train")
            valid = [r for r in rows if r.get("split") == "valid"]
            if valid:
                ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label=f"{label} valid")
        else:
            ax.plot(steps, [r["lr" if panel == "lr" else "tokens_per_s"] for r in train], label=label)
    ax.set_title(PANELS[panel])
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _figure(panels: list[str], run_dirs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        _draw(ax, panel, run_dirs)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """One PNG comparing runs: loss (train and valid), learning rate and throughput against step."""
    return _figure(list(PANELS), run_dirs, Path(out))


def write_run_plots(run_dir: Path) -> list[Path]:
    """RUN_DIR/plots/{loss,lr,throughput}.png for one run."""
    return [_figure([panel], [run_dir], Path(run_dir) / "plots" / f"{panel}.png") for panel in PANELS]
