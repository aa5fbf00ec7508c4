"""Checkpoints: written to a temporary directory, checksummed, then renamed into place.

A checkpoint directory either exists complete or not at all, so a crash or kill during a
write leaves the previous checkpoint loadable. ``checkpoints/latest`` names the newest.

    checkpoints/step_00001000/
        state/              model + optimiser state, torch.distributed.checkpoint (DCP): each rank
                            writes its own shards in parallel; loading reshards to any world size
                            and any strategy (none / ddp / fsdp)
        model.safetensors   the whole model, consolidated (tied tensors stored once): what eval,
                            generate, export and compression read, whatever the world size
        trainer.pt          scheduler, data-loader position, every rank's RNG state, step, tokens
        config.yaml         the run's resolved config
        checksums.json      sha256 of each file above

Every rank takes part in saving and loading (the collectives inside DCP); rank 0 alone writes the
rest and renames. With several machines the run directory must be on a shared file system.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.5
    from torch.distributed._tensor import DTensor

from bigbatch.config import Config, load_config
from bigbatch.data.shards import sha256_file
from bigbatch.distributed.process import ONE_PROCESS, Dist
from bigbatch.errors import UserError


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
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


@contextlib.contextmanager
def _quiet_dcp():
    """DCP warns that it saves "in a single process" when no process group exists: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def _consolidated(model, config: Config, dist: Dist) -> torch.nn.Module | None:
    """On rank 0, a plain CPU module holding the whole model (gathered from shards under FSDP)."""
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return unwrap(model) if dist.is_main else None
    from bigbatch.nn.models import build_model

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist.is_main:
        return None
    plain = build_model(config.task, config.model)
    plain.load_state_dict(full)
    return plain


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, trainer_state: dict, config: Config,
                    keep_last: int = 2, dist: Dist = ONE_PROCESS, best: bool = False) -> Path:
    """Write checkpoints/step_NNNNNNNN (the step, 8 digits) atomically, point ``latest`` (and with ``best``,
    ``best``) at it, keep the newest ``keep_last`` and the best. Called by every rank; ``trainer_state`` is
    rank 0's."""
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-{final.name}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with _quiet_dcp():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "state"))
    plain = _consolidated(model, config, dist)
    if dist.is_main:
        st_save_model(plain, str(tmp / "model.safetensors"))
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "config.yaml").write_text(config.to_yaml())
        sums = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(path)
            sums[str(path.relative_to(tmp))] = sha256_file(path)
        (tmp / "checksums.json").write_text(json.dumps(sums, indent=1))
        _fsync(tmp / "checksums.json")
        if final.exists():  # a re-save of the same step (e.g. after a resume) replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(ckpt_root / "latest", final.name + "\n")
        if best:
            write_text_atomic(ckpt_root / "best", final.name + "\n")
        kept = _named(ckpt_root, "best")
        steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
        for old in steps[:-keep_last]:
            if old != kept:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _named(ckpt_root: Path, pointer: str) -> Path | None:
    """The checkpoint directory a pointer file (latest, best) names, or None."""
    path = Path(ckpt_root) / pointer
    if not path.is_file():
        return None
    ckpt = path.parent / path.read_text().strip()
    return ckpt if ckpt.is_dir() else None


def mark_best(ckpt_root: Path, step: int) -> None:
    """Point checkpoints/best at the (existing) checkpoint of ``step``."""
    write_text_atomic(Path(ckpt_root) / "best", f"step_{step:08d}\n")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    return _named(Path(run_dir) / "checkpoints", "latest")


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run directory or a checkpoint directory -> the checkpoint.

    ``which`` picks in a run directory: best (the best by the validation metric; latest where the run has
    no best yet), latest, or a checkpoint's name (step_00001000)."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    if not path.exists():
        raise UserError(f"{path}: no such run or checkpoint directory")
    root = path / "checkpoints"
    if which not in ("best", "latest"):
        if not (root / which / "model.safetensors").exists():
            have = ", ".join(sorted(p.name for p in root.glob("step_*"))) or "none"
            raise UserError(f"--checkpoint {which}: no such checkpoint in {root} (have: {have}; or best, latest)")
        return root / which
    ckpt = _named(root, "best") if which == "best" else None
    if ckpt is None and which == "best" and _named(root, "latest") is not None:
        print(f"note: {path} has no checkpoints/best (no evaluation yet); using checkpoints/latest", file=sys.stderr)
    ckpt = ckpt or _named(root, "latest")
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


def load_model(path: str | Path, device: str | torch.device = "cpu", checkpoint: str = "best"):
    """bigbatch.load: a run or checkpoint directory -> (model in eval mode, Config); in a run directory
    ``checkpoint`` is best (default), latest or a step_N name."""
    from bigbatch.nn.models import build_model

    ckpt = resolve_checkpoint(path, checkpoint)
    verify(ckpt)
    config = load_config(ckpt / "config.yaml")
    model = build_model(config.task, config.model)
    st_load_model(model, str(ckpt / "model.safetensors"), device=str(device))
    return model.to(device).eval(), config


def load_training_state(ckpt: Path, model, optimizer, dist: Dist = ONE_PROCESS) -> dict:
    """Restore model and optimiser in place (every rank, any world size) from a verified checkpoint;
    returns trainer.pt's dict."""
    error = None
    if dist.is_main:
        try:
            verify(ckpt)
        except UserError as e:
            error = str(e)
    error = dist.broadcast(error)
    if error:
        raise UserError(error)
    if (ckpt / "state").is_dir():
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        with _quiet_dcp():
            dcp.load(state, checkpoint_id=str(ckpt / "state"))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:  # the single-file format of earlier versions
        st_load_model(unwrap(model), str(ckpt / "model.safetensors"))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return torch.load(ckpt / "trainer.pt", weights_only=False)
