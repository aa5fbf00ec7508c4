"""Metrics: one JSON object per line in metrics.jsonl, the same scalars in TensorBoard, PNG plots."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch

from bigbatch.errors import UserError

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
    lines = Path(path).read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == last:
                continue
            raise UserError(f"{path}:{i + 1}: not a JSON object: {line[:60]!r}") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{i + 1}: expected a JSON object per line, got {line[:60]!r}")
        rows.append(row)
    return rows


# the x axes of `bigbatch plot --x`: the metrics.jsonl key each reads and its axis label. elapsed_s is the
# run's training clock (the one train.max_time_s counts; evaluation and checkpoints excluded, resumes continue it)
X_AXES = {"step": ("step", "step"), "tokens": ("tokens", "tokens"),
          "time": ("elapsed_s", "training time (s, evaluation excluded)")}
PANELS = {"loss": "loss (nats/target)", "lr": "learning rate", "throughput": "tokens/s"}


def _train_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "split" not in r and "skipped" not in r and isinstance(r.get("step"), (int, float))]


def load_run(run_dir: Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl; UserError where there is no such file or no training row in it."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory; expected a run directory (bigbatch train --run-dir)")
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl; expected a run directory written by bigbatch train")
    rows = read_metrics(path)
    if not any(r.get("loss") is not None for r in _train_rows(rows)):
        what = "is empty" if not rows else "has no training rows (with step and loss)"
        raise UserError(f"{path} {what}; nothing to plot")
    return rows


def _x_of(rows: list[dict], train: list[dict], key: str) -> list[float]:
    """Each row's own ``key``, else its value interpolated over step between the training rows (valid rows carry
    no elapsed_s: the training clock stands still during evaluation, so a valid row at step s sits at the
    clock of step s)."""
    import numpy as np

    known = [(r["step"], r[key]) for r in train if r.get(key) is not None]
    steps, values = [s for s, _ in known], [v for _, v in known]
    return [r[key] if r.get(key) is not None else float(np.interp(r["step"], steps, values)) for r in rows]


def _valid_rows(rows: list[dict], full: bool) -> list[dict]:
    """Valid rows with a loss: the periodic ones on a fixed sample, or (``full``) the final one on the whole split."""
    return [r for r in rows if r.get("split") == "valid" and r.get("loss") is not None
            and isinstance(r.get("step"), (int, float)) and bool(r.get("full")) == full]


def _draw(axes: dict, rows: list[dict], key: str, colour) -> None:
    train = _train_rows(rows)
    for panel, field in (("loss", "loss"), ("lr", "lr"), ("throughput", "tokens_per_s")):
        if panel in axes:
            have = [r for r in train if r.get(field) is not None]
            axes[panel].plot(_x_of(have, train, key), [r[field] for r in have], color=colour, lw=1.2)
    if "loss" in axes:
        for full, style, size in ((False, "o--", 4), (True, "*", 11)):
            valid = _valid_rows(rows, full)
            if valid:
                axes["loss"].plot(_x_of(valid, train, key), [r["loss"] for r in valid], style, color=colour, ms=size)


def _labels(run_dirs: list[Path]) -> list[str]:
    """Legend names: each run directory's name, the path as given where two names are the same."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def run_figure(run_dirs: list[Path], x: str = "step", panels: list[str] | None = None):
    """A matplotlib Figure overlaying runs, one colour per run: train loss (line), valid loss (dots: the fixed sample
    of each evaluation; a star: the final one on the whole split), learning rate and tokens/s against ``x`` (step |
    tokens | time). Where a run's rows lack the x field (a metrics.jsonl of another tool) the figure falls back to
    step, with a note on stderr."""
    if x not in X_AXES:
        raise UserError(f"--x {x!r}: expected one of {', '.join(X_AXES)}")
    panels = panels or list(PANELS)
    runs = [(label, load_run(d)) for label, d in zip(_labels(run_dirs), run_dirs)]
    key, xlabel = X_AXES[x]
    lacking = [label for label, rows in runs if not any(r.get(key) is not None for r in _train_rows(rows))]
    if lacking:
        print(f"note: {', '.join(lacking)}: metrics.jsonl rows carry no {key!r}; plotting every run against step "
              f"instead of {x}", file=sys.stderr)
        key, xlabel = X_AXES["step"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    colours = [f"C{i}" for i in range(10)] if len(runs) <= 10 else plt.get_cmap("viridis")(
        [i / (len(runs) - 1) for i in range(len(runs))])
    handles = [Line2D([], [], color=c, lw=2, label=label) for (label, _), c in zip(runs, colours)]
    if "loss" in panels:  # the line styles of the loss panel
        handles += [Line2D([], [], color="0.4", lw=1.2, label="train"),
                    Line2D([], [], color="0.4", ls="--", marker="o", ms=4, label="valid (sample)")]
        if any(_valid_rows(rows, True) for _, rows in runs):
            handles.append(Line2D([], [], color="0.4", ls="", marker="*", ms=9, label="valid (whole split, final)"))
    n_cols = min(len(handles), 5)
    legend_rows = -(-len(handles) // n_cols)
    fig, grid = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 4 + 0.3 * legend_rows), squeeze=False)
    axes = dict(zip(panels, grid[0]))
    for (_, rows), colour in zip(runs, colours):
        _draw(axes, rows, key, colour)
    for panel, ax in axes.items():
        ax.set_title(PANELS[panel])
        ax.set_xlabel(xlabel)
        if key == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 400k, 1.2M: full counts run into each other
        ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="lower center", ncol=n_cols, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, (0.05 + 0.25 * legend_rows) / fig.get_figheight(), 1, 1))  # room for the legend
    return fig


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[Path], out: Path, x: str = "step") -> Path:
    """One PNG (or .svg / .pdf) comparing runs: train and valid loss, learning rate and tokens/s against ``x``."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"--out {out}: expected a file name ending in .png, .svg or .pdf")
    return _save(run_figure([Path(d) for d in run_dirs], x), out)


def write_run_plots(run_dir: Path) -> list[Path]:
    """RUN_DIR/plots/{loss,lr,throughput}.png for one run, against step; none before its first logged step."""
    try:
        load_run(run_dir)
    except UserError:
        return []
    return [_save(run_figure([run_dir], "step", [panel]), Path(run_dir) / "plots" / f"{panel}.png")
            for panel in PANELS]
