"""The confusion matrix of a classifier as a PNG (what `bigbatch eval` writes for classify / vision runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_confusion(confusion, labels: list[str], path: str | Path, title: str = "") -> Path:
    """Rows: true class, columns: predicted; each row normalised to 1 (the cell's colour) with its count
    written in it when there are at most 30 classes. Written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bigbatch.data.shards import write_atomic

    counts = np.asarray(confusion, dtype=np.int64)
    n = len(counts)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(max(4.0, 0.45 * n + 2.0), 20.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [str(x)[:18] for x in labels[:n]] + [str(i) for i in range(len(labels), n)]
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if rates[i, j] > 0.5 else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title} accuracy {accuracy:.4f}".strip())
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path
