"""Small synthetic tasks and command-line helpers shared by tests."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parent.parent
TINY = ROOT / "configs" / "tiny_lm.yaml"


def run_cli(*args, check=True, stdin=None, timeout=600, **kw):
    """`bigbatch ARGS...` in a fresh process; raises with the stderr tail on a non-zero exit when ``check``."""
    proc = subprocess.run([sys.executable, "-m", "bigbatch", *map(str, args)], capture_output=True, text=True,
                          cwd=kw.pop("cwd", ROOT), timeout=timeout, input=stdin, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def train_rows(run_dir) -> list[dict]:
    """The training rows of a run's metrics.jsonl (evaluation rows left out)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "split" not in r]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

PAD, BOS, EOS = 0, 1, 2


def reverse_batch(batch: int, generator: torch.Generator, vocab: int = 13, min_len: int = 3, max_len: int = 8) -> dict:
    """Random sequences of tokens 3..vocab-1 with ragged lengths; the target is the reversed source.

    src_ids (B, S) right-padded with PAD; tgt_ids (B, T + 1) = BOS, reversed source, EOS, PAD...
    """
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    src = torch.full((batch, max_len), PAD)
    tgt = torch.full((batch, max_len + 2), PAD)
    for i, n in enumerate(lengths.tolist()):
        seq = torch.randint(3, vocab, (n,), generator=generator)
        src[i, :n] = seq
        tgt[i, 0] = BOS
        tgt[i, 1 : n + 1] = seq.flip(0)
        tgt[i, n + 1] = EOS
    return {"src_ids": src, "src_mask": src != PAD, "tgt_ids": tgt, "tgt_mask": tgt != PAD, "lengths": lengths}


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def sentences(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 15))) for _ in range(n)]


def classify_rows(n, seed=0):
    return [{"text": s, "label": "long" if len(s.split()) > 8 else "short"} for s in sentences(n, seed)]
