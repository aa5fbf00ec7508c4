"""Checkpoints: written to a temporary directory, checksummed, then renamed into place.

A checkpoint directory either exists complete or not at all, so a crash or kill during a
write leaves the previous checkpoint loadable. ``checkpoints/latest`` names the newest.

    checkpoints/step_00001000/
        model.safetensors   weights of the unwrapped model (tied tensors stored once)
        optimizer.pt        optimiser state
        trainer.pt          scheduler, data-loader position, RNG states, step, tokens seen
        config.yaml         the run's resolved config
        checksums.json      sha256 of each file above
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from bigbatch.config import Config, load_config
from bigbatch.data.shards import sha256_file
from bigbatch.errors import UserError

FILES = ("model.safetensors", "optimizer.pt", "trainer.pt", "config.yaml")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers, whose parameter names are the API."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, trainer_state: dict, config: Config,
                    keep_last: int = 2) -> Path:
    """Write checkpoints/step_NNNNNNNN (the step, 8 digits) atomically, point ``latest`` at it, keep the newest ``keep_last``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    st_save_model(unwrap(model), str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "config.yaml").write_text(config.to_yaml())
    sums = {}
    for name in FILES:
        _fsync(tmp / name)
        sums[name] = sha256_file(tmp / name)
    (tmp / "checksums.json").write_text(json.dumps(sums, indent=1))
    _fsync(tmp / "checksums.json")
    if final.exists():  # a re-save of the same step (e.g. after a resume) replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(ckpt_root / "latest", final.name + "\n")
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    ckpt = pointer.parent / pointer.read_text().strip()
    return ckpt if ckpt.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (-> its latest checkpoint) or a checkpoint directory -> the checkpoint."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    if not path.exists():
        raise UserError(f"{path}: no such run or checkpoint directory")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise UserError(f"{path}: not a checkpoint and holds no checkpoints/latest (has the run saved one yet?)")
    return ckpt


def verify(ckpt: Path) -> None:
    """Check every file against checksums.json; a mismatch names the file."""
    sums_file = ckpt / "checksums.json"
    if not sums_file.exists():
        raise UserError(f"{ckpt}: checksums.json is missing; the checkpoint is incomplete")
    for name, expected in json.loads(sums_file.read_text()).items():
        if not (ckpt / name).exists() or sha256_file(ckpt / name) != expected:
            raise UserError(f"{ckpt / name}: checksum mismatch; the checkpoint is corrupt")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """bigbatch.load: a run or checkpoint directory -> (model in eval mode, Config)."""
    from bigbatch.nn.models import build_model

    ckpt = resolve_checkpoint(path)
    verify(ckpt)
    config = load_config(ckpt / "config.yaml")
    model = build_model(config.task, config.model)
    st_load_model(model, str(ckpt / "model.safetensors"), device=str(device))
    return model.to(device).eval(), config


def load_training_state(ckpt: Path, model, optimizer) -> dict:
    """Restore model and optimiser in place from a verified checkpoint; returns trainer.pt's dict."""
    verify(ckpt)
    st_load_model(unwrap(model), str(ckpt / "model.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return torch.load(ckpt / "trainer.pt", weights_only=False)
