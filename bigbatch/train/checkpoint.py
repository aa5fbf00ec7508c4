"""Checkpoints: written to a temporary directory, checksummed, then renamed into place.

A checkpoint directory either exists complete or not at all, so a crash or kill during a
write leaves the previous checkpoint loadable. ``checkpoints/latest`` names the newest.

    checkpoints/step_00001000/
        state/              model + optimiser state, torch.distributed.checkpoint (DCP): each rank
                            writes its own shards in parallel; loading reshards to any world size
                            and any strategy (none / ddp / fsdp)
        model.safetensors   the whole model, consolidated (tied tensors stored once): what eval,
                            generate, export and compression read, whatever the world size
        trainer.json        scheduler, data-loader position, every rank's RNG state, gradient scaler,
                            clock, best-so-far, step, tokens (JSON: nothing in it can run code)
        config.yaml         the run's resolved config
        tokenizer.json      the run's trained tokenizer (absent for the byte tokenizer)
        labels.json         the class names (classification)
        checksums.json      sha256 of each file above

A checkpoint directory is self-contained: copied out of its run it still loads, tokenizes and names
its labels. Every rank takes part in saving and loading (the collectives inside DCP); rank 0 alone
writes the rest and renames. With several machines the run directory must be on a shared file system.

Trust: nothing is unpickled with code. model.safetensors holds tensors only; trainer.json is JSON;
DCP's metadata is a pickle, so it is read by an unpickler that admits only DCP's own metadata classes,
and DCP's non-tensor entries load with ``torch.load(weights_only=True)``. checksums.json detects
damage, not tampering (it sits beside the files it covers).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import re
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint._nested_dict import set_element
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
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
from bigbatch.tasks import get_task


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


TRAINER_FILE = "trainer.json"
_STEP_DIR = re.compile(r"^(?:\.replaced-)?step_(\d+)$")


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, trainer_state: dict, config: Config,
                    keep_last: int = 2, dist: Dist = ONE_PROCESS, best: bool = False,
                    assets: dict[str, bytes] | None = None) -> Path:
    """``_save_checkpoint``; a full disk (ENOSPC / EDQUOT, also inside DCP's or safetensors' errors) removes the
    partial temporary directory and raises a UserError naming the directory and the space a checkpoint needs
    (the previous one's size); the previous checkpoint stays as it was."""
    try:
        return _save_checkpoint(ckpt_root, step, model, optimizer, trainer_state, config, keep_last, dist, best, assets)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        cause = _no_space(e, _free_bytes(ckpt_root) < 1 << 20)
        if cause is None:
            raise
    final, tmp = Path(ckpt_root) / f"step_{step:08d}", Path(ckpt_root) / f".tmp-step_{step:08d}"
    written = _dir_bytes(tmp)
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    previous = _named(Path(ckpt_root), "latest")
    need = f"about {_dir_bytes(previous) / 1e6:.1f} MB (the size of {previous.name})" if previous is not None \
        else f"more than the {written / 1e6:.1f} MB written before the disk filled"
    free = _free_bytes(ckpt_root) / 1e6
    kept = f"the previous checkpoint {previous.name} is intact; " if previous is not None else ""
    why = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    raise UserError(f"{final}: no space left on device while writing the checkpoint ({why}); it needs {need} "
                    f"besides the kept ones, {free:.1f} MB are free; {kept}free space (or lower train.keep_last) "
                    "and run the same command again to resume") from None


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(e: BaseException, disk_full: bool = False) -> BaseException | None:
    """The full-disk (or quota) error in ``e``, or None: an OSError, one rank's inside DCP's CheckpointException,
    safetensors' (Rust) error, which carries only the message "... (os error 28)", or, with ``disk_full``, any
    error (torch.save's zip writer, used by DCP, reports a failed write as "unexpected pos", not as ENOSPC)."""
    if isinstance(e, CheckpointException):
        return next((c for f in e.failures.values() if (c := _no_space(f[0] if isinstance(f, tuple) else f,
                                                                        disk_full))), None)
    if isinstance(e, OSError) and e.errno in _NO_SPACE or any(f"(os error {n})" in str(e) for n in _NO_SPACE):
        return e
    return e if disk_full else None


def _free_bytes(path: Path) -> float:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return float("inf")


def _dir_bytes(path: Path | None) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path is not None and path.is_dir() else 0


def _save_checkpoint(ckpt_root: Path, step: int, model, optimizer, trainer_state: dict, config: Config,
                     keep_last: int = 2, dist: Dist = ONE_PROCESS, best: bool = False,
                     assets: dict[str, bytes] | None = None) -> Path:
    """Write checkpoints/step_NNNNNNNN (the step, 8 digits) atomically, point ``latest`` (and with ``best``,
    ``best``) at it, keep the newest ``keep_last`` and the best. Called by every rank; ``trainer_state`` is
    rank 0's and must be JSON-serialisable; ``assets`` (file name -> bytes: tokenizer.json, labels.json)
    travel inside the checkpoint.

    A complete checkpoint is never deleted before its replacement is in place: a re-save of the same step
    first renames the old one aside (.replaced-step_N), and ``find_resumable`` still finds it if the process
    dies before the new one is renamed in."""
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
        (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state))
        (tmp / "config.yaml").write_text(config.to_yaml())
        for name, data in (assets or {}).items():
            (tmp / name).write_bytes(data)
        sums = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(path)
            sums[str(path.relative_to(tmp))] = sha256_file(path)
        (tmp / "checksums.json").write_text(json.dumps(sums, indent=1))
        _fsync(tmp / "checksums.json")
        for d in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:  # the entries, before the rename publishes them
            _fsync(d)
        replaced = ckpt_root / f".replaced-{final.name}"
        if final.exists():  # a re-save of the same step (e.g. after a resume): set the old one aside first
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp, final)
        _fsync(ckpt_root)
        write_text_atomic(ckpt_root / "latest", final.name + "\n")
        if best:
            write_text_atomic(ckpt_root / "best", final.name + "\n")
        shutil.rmtree(replaced, ignore_errors=True)
        kept = _named(ckpt_root, "best")  # the new one plus the newest keep_last - 1 before it; later steps (a
        # resume from an older checkpoint) are left to be replaced as the run reaches them, never pruned
        older = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and p.name < final.name)
        for old in older[: max(len(older) - max(keep_last - 1, 0), 0)]:
            if old != kept:
                shutil.rmtree(old, ignore_errors=True)
        for stale in [*ckpt_root.glob(".tmp-step_*"), *ckpt_root.glob(".replaced-step_*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a process killed mid-save
    dist.barrier()
    return final


def write_weights_run(out: Path, model: torch.nn.Module, config: Config, assets: dict[str, bytes],
                      summary: dict, step: int = 0) -> Path:
    """A run directory holding one weights-only checkpoint (what ``bigbatch compress`` writes): config.yaml,
    checkpoints/step_N/ (model.safetensors, config.yaml, the assets, checksums.json) marked latest and best,
    the assets beside config.yaml, summary.json. Built under a temporary name and renamed into place, so
    ``out`` exists complete or not at all; an existing non-empty ``out`` is refused (nothing is overwritten)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists and is not empty; give a new directory (nothing is overwritten)")
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt = tmp / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    st_save_model(unwrap(model), str(ckpt / "model.safetensors"))
    (ckpt / "config.yaml").write_text(config.to_yaml())
    for name, data in assets.items():
        (ckpt / name).write_bytes(data)
        (tmp / name).write_bytes(data)
    sums = {p.name: sha256_file(p) for p in sorted(ckpt.iterdir())}
    (ckpt / "checksums.json").write_text(json.dumps(sums, indent=1))
    for pointer in ("latest", "best"):
        (tmp / "checkpoints" / pointer).write_text(ckpt.name + "\n")
    (tmp / "config.yaml").write_text(config.to_yaml())
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    for path in [p for p in tmp.rglob("*")] + [tmp]:
        _fsync(path)
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    return out


def checkpoint_asset_files(ckpt: Path) -> dict[str, bytes]:
    """tokenizer.json and labels.json of a checkpoint (or, for checkpoints of earlier versions, its run's)."""
    ckpt = Path(ckpt)
    places = [ckpt, ckpt.parent.parent] if ckpt.parent.name == "checkpoints" else [ckpt]
    found = {}
    for name in ("tokenizer.json", "labels.json"):
        path = next((d / name for d in places if (d / name).exists()), None)
        if path is not None:
            found[name] = path.read_bytes()
    return found


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, enabled: bool = True):
    """Hold ``run_dir/.lock`` (an exclusive flock) while a run writes there: a second process on the same run
    directory (a requeued job while the old one lingers) is refused instead of deleting the other's
    half-written checkpoint. The lock goes with the process, however it ends."""
    if not enabled:
        yield
        return
    import fcntl

    fd = os.open(Path(run_dir) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"{run_dir} is in use by another bigbatch process (pid {holder}); wait for it to end "
                            "or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


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
    """The checkpoint ``checkpoints/latest`` names, or None (no verification; see ``find_resumable``)."""
    return _named(Path(run_dir) / "checkpoints", "latest")


def _candidates(root: Path) -> list[Path]:
    """Checkpoint directories, newest step first (a .replaced- copy after the step it was replaced by)."""
    found = [(int(m.group(1)), not p.name.startswith("."), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_DIR.match(p.name))] if root.is_dir() else []
    return [p for _, _, p in sorted(found, reverse=True)]


def find_resumable(run_dir: Path) -> Path | None:
    """The checkpoint a run resumes from: the one ``latest`` names when it verifies, else the newest that
    verifies (with a note saying which was skipped and why). None when the run directory holds no
    checkpoint; an error when it holds checkpoints and none verifies: never a silent start from scratch."""
    root = Path(run_dir) / "checkpoints"
    named, candidates = _named(root, "latest"), _candidates(root)
    if named is not None:
        candidates = [named] + [c for c in candidates if c != named]
    if not candidates:
        if (root / "latest").exists():
            raise UserError(f"{root / 'latest'} names {(root / 'latest').read_text().strip()!r}, which does not "
                            "exist, and no other checkpoint is there; move checkpoints/ away to start afresh")
        return None
    problems = []
    for ckpt in candidates:
        try:
            verify(ckpt)
        except UserError as e:
            problems.append(str(e))
            if ckpt.name.startswith("step_"):  # kept for inspection, out of the way of pruning and resumes
                os.replace(ckpt, ckpt.with_name(f".corrupt-{ckpt.name}"))
                problems[-1] += f" (set aside as .corrupt-{ckpt.name})"
            continue
        if problems or ckpt != named:
            why = "; ".join(problems) or f"{root / 'latest'} is missing or names no checkpoint"
            print(f"note: resuming from {ckpt.name}, the newest checkpoint that verifies ({why})", file=sys.stderr)
        return ckpt
    raise UserError(f"{root}: no checkpoint verifies ({'; '.join(problems)}); to start from scratch use another "
                    "--run-dir or move checkpoints/ away")


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run directory or a checkpoint directory -> the checkpoint.

    ``which`` picks in a run directory: best (the best by the validation metric; latest where the run has
    no best yet), latest, or a checkpoint's name (step_00001000)."""
    path = Path(path)
    if (path / "model.safetensors").exists() and not (path / "checkpoints").is_dir():
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
        found = [c for c in _candidates(root) if (c / "checksums.json").exists()]
        if not found:
            raise UserError(f"{path}: not a checkpoint and holds no complete checkpoint (has the run saved one yet?)")
        ckpt = found[0]
        print(f"note: {root / which} names no checkpoint; using {ckpt.name}, the newest there", file=sys.stderr)
    return ckpt


def verify(ckpt: Path) -> None:
    """Check every file against checksums.json; a mismatch names the file."""
    sums_file = ckpt / "checksums.json"
    if not sums_file.exists():
        raise UserError(f"{ckpt}: checksums.json is missing; the checkpoint is incomplete")
    try:
        sums = json.loads(sums_file.read_text())
        if not isinstance(sums, dict) or not sums:
            raise ValueError("not a mapping of files to checksums")
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{sums_file}: unreadable ({e}); the checkpoint is corrupt") from None
    for name, expected in sums.items():
        if not (ckpt / name).exists():
            raise UserError(f"{ckpt / name}: missing; the checkpoint is incomplete")
        if sha256_file(ckpt / name) != expected:
            raise UserError(f"{ckpt / name}: checksum mismatch; the checkpoint is corrupt")


class _MetadataUnpickler(pickle.Unpickler):
    """DCP writes its .metadata with pickle; this reads it admitting only the classes DCP puts there
    (plain data holders, torch.Size, dtypes, paths), so a planted payload cannot run code."""

    ALLOWED = {
        "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                                  "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                                  "StorageMeta", "_MEM_FORMAT_ENCODING"},
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},
        "torch": {"Size"},
        "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
        "pathlib._local": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
        "collections": {"OrderedDict"},
    }

    DTYPES = frozenset(k for k, v in vars(torch).items() if isinstance(v, torch.dtype))

    def find_class(self, module: str, name: str):
        if name in self.ALLOWED.get(module, ()) or (module == "torch" and name in self.DTYPES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata type")


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except Exception as e:  # noqa: BLE001 - whatever a damaged or hostile file raises: one line
            raise UserError(f"{path}: refused ({type(e).__name__}: {e}); checkpoint state must hold data only") from None
        if not isinstance(metadata, Metadata):
            raise UserError(f"{path}: refused (a {type(metadata).__name__}, not checkpoint metadata)")
        for info in (metadata.storage_data or {}).values():  # every file it names lies in this state/ directory
            rel = str(getattr(info, "relative_path", ""))
            if not rel or "/" in rel or "\\" in rel or rel in (".", ".."):
                raise UserError(f"{path}: refused (names the file {rel!r} outside its directory)")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    """DCP's non-tensor entries (optimizer hyper-parameters) load as data only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(f"checkpoint state entry {read_item.dest_index.fqn}: refused ({e})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def read_trainer_state(ckpt: Path) -> dict:
    """trainer.json (or, from checkpoints of earlier versions, trainer.pt read with weights_only=True)."""
    path = ckpt / TRAINER_FILE
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e}); the checkpoint is corrupt") from None
    path = ckpt / "trainer.pt"
    if not path.exists():
        raise UserError(f"{ckpt}: no {TRAINER_FILE}; the checkpoint is incomplete")
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    numpy_types = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), (reconstruct, "numpy.core.multiarray._reconstruct"),
                   (reconstruct, "numpy._core.multiarray._reconstruct")]
    try:
        with torch.serialization.safe_globals(numpy_types), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pickle protocol 4": the payload, not the reader, is the news
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        why = next((x for x in lines if "nsupported" in x), lines[0] if lines else type(e).__name__)
        raise UserError(f"{path}: refused: it holds more than data ({why})") from None
def load_model(path: str | Path, device: str | torch.device = "cpu", checkpoint: str = "best"):
    """bigbatch.load: a run or checkpoint directory -> (model in eval mode, Config); in a run directory
    ``checkpoint`` is best (default), latest or a step_N name."""
    from bigbatch.nn.models import build_model

    ckpt = resolve_checkpoint(path, checkpoint)
    verify(ckpt)
    config = load_config(ckpt / "config.yaml")
    try:
        model = build_model(config.task, config.model)
        st_load_model(model, str(ckpt / "model.safetensors"), device=str(device))
    except (ValueError, RuntimeError) as e:
        if "out of memory" in str(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"{ckpt}: the weights do not load into the model its config.yaml describes ({first}); "
                        "was it written by another version of bigbatch?") from e
    return model.to(device).eval(), config


def checkpoint_assets(ckpt: Path, config: Config, head: bool = True):
    """(tokenizer, class names or None) a checkpoint was trained with: its own tokenizer.json and labels.json
    (checkpoints of earlier versions: its run directory's). Refuses, in one line, rather than fall back to
    bytes or to numbered labels, which would give wrong answers."""
    from bigbatch.data.tokenizer import ByteTokenizer, load_tokenizer_file

    ckpt = Path(ckpt)
    places = [ckpt]
    if not (ckpt / TRAINER_FILE).exists() and ckpt.parent.name == "checkpoints":  # written before checkpoints
        places.append(ckpt.parent.parent)  # carried these: its run directory's copies
    kind = str(config.data.tokenizer)
    tok_file = next((d / "tokenizer.json" for d in places if (d / "tokenizer.json").exists()), None)
    if kind == "byte":
        tokenizer = ByteTokenizer()
    elif kind in ("pixels", "pcm16"):
        from bigbatch.data.pipeline import tokenizer_of

        tokenizer = tokenizer_of(ckpt, kind)
    elif tok_file is not None:
        tokenizer = load_tokenizer_file(tok_file)
        tokenizer.kind = kind if kind in ("bpe", "unigram") else tokenizer.kind
    else:
        raise UserError(f"{ckpt}: no tokenizer.json, and the model was trained with data.tokenizer={kind}; copy the "
                        "run's tokenizer.json into the checkpoint directory")
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(f"{tok_file}: {tokenizer.vocab_size} ids, more than the model's vocab_size "
                        f"{config.model.vocab_size}; it is not this model's tokenizer")
    labels = None
    if config.task == "classify" and not config.model.num_classes:
        if head:
            raise UserError(f"{ckpt}: this model has no classifier head (an encoder imported without one); fine-tune "
                            "it on labelled data first: bigbatch train CONFIG --set train.init_from=RUN_DIR")
    elif get_task(config.task).labelled:
        labels_file = next((d / "labels.json" for d in places if (d / "labels.json").exists()), None)
        if labels_file is None:
            raise UserError(f"{ckpt}: no labels.json (the class names); copy the run's labels.json into the "
                            "checkpoint directory")
        try:
            labels = json.loads(labels_file.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{labels_file}: not JSON ({e})") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UserError(f"{labels_file}: expected a JSON list of class names")
        if len(labels) != config.model.num_classes:
            raise UserError(f"{labels_file}: {len(labels)} labels, the model has {config.model.num_classes} classes")
    return tokenizer, labels


def load_training_state(ckpt: Path, model, optimizer, dist: Dist = ONE_PROCESS, verified: bool = False) -> dict:
    """Restore model and optimiser in place (every rank, any world size) from a checkpoint (verified here
    unless ``verified``); returns the trainer state dict."""
    error = None
    if dist.is_main and not verified:
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
        reader = _SafeReader(str(ckpt / "state"))
        reader.read_metadata()  # a refused or unreadable .metadata: one line here, not inside DCP's wrappers
        try:
            with _quiet_dcp():
                dcp.load(state, storage_reader=reader, planner=_SafePlanner())
        except CheckpointException as e:
            lines = [x.strip() for x in str(e).splitlines() if x.strip() and not x.startswith(" ")]
            raise UserError(f"{ckpt / 'state'}: cannot be loaded ({lines[-1] if lines else type(e).__name__})") from None
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:  # the single-file format of earlier versions
        st_load_model(unwrap(model), str(ckpt / "model.safetensors"))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return read_trainer_state(ckpt)
