"""What the config leaves open, resolved before training: device, batch plan, sizes from the data."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from bigbatch.config import Config, load_config
from bigbatch.data.pipeline import TaskData, build_data, resolve_before_data, shard_dir_for
from bigbatch.data.shards import read_manifest
from bigbatch.distributed.process import ONE_PROCESS, Dist
from bigbatch.errors import UserError
from bigbatch.tasks import get_task
from bigbatch.train.defaults import DataStats, fill_unset_from, inherit_from_init, resolve_from_data


@dataclasses.dataclass
class BatchPlan:
    """micro: rows (lm), examples, or a token budget (classify / translate with micro_batch_tokens)."""

    micro: int
    accum_steps: int
    unit: str  # "rows", "examples" or "tokens"
    seq_len: int = 0
    ranks: int = 1

    @property
    def total(self) -> int:
        """The global batch: micro-batch x accumulation x ranks."""
        return self.micro * self.accum_steps * self.ranks

    def describe(self) -> str:
        if self.unit == "rows":
            return (f"global {self.total} x {self.seq_len} = {self.total * self.seq_len:,} tokens, "
                    f"micro-batch {self.micro}")
        return f"global {self.total:,} {self.unit}, micro-batch {self.micro:,} {self.unit}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: CUDA is not available on this machine; use cpu or auto")
    return torch.device(name)


@contextlib.contextmanager
def subnormals_flushed():
    """Within: subnormal floats (|x| < 1.2e-38) count as zero on the CPU, as training, evaluation and the
    command line run; the caller's mode is restored after (usable as a decorator). Gradients that fade through
    an LSTM's time steps reach that range, and x86 arithmetic on subnormals is many times slower: a 2-layer
    LSTM over 528 tokens trained 6.6x slower without this (docs/performance.md)."""
    tiny = torch.tensor([1e-39])
    before = bool((tiny * 1.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def plan_batch(cfg: Config, ranks: int = 1) -> BatchPlan:
    """Global batch -> micro-batch per rank and accumulation steps; bad divisibility fails showing the numbers.

    The global batch is the config's whatever the number of ranks: more ranks, fewer micro-batches each.
    """
    t, seq_len = cfg.train, cfg.data.seq_len
    given_micro = t.micro_batch_size if t.micro_batch_size != "auto" else None  # auto: resolved once the model exists
    if cfg.task == "lm":
        if t.global_batch_tokens:
            if t.global_batch_tokens % seq_len:
                raise UserError(f"train.global_batch_tokens={t.global_batch_tokens} is not a multiple of "
                                f"data.seq_len={seq_len}")
            global_rows = t.global_batch_tokens // seq_len
        else:
            global_rows = t.global_batch_size or (given_micro or 16 // ranks or 1) * ranks
        unit, name, total = "rows", "train.micro_batch_size", global_rows
    elif t.micro_batch_tokens:
        given_micro, unit, name = t.micro_batch_tokens, "tokens", "train.micro_batch_tokens"
        total = t.global_batch_tokens or given_micro * ranks
    else:
        unit, name, total = "examples", "train.micro_batch_size", t.global_batch_size or (given_micro or 32) * ranks
    smallest = t.batch_start or t.batch_min if t.batch_schedule != "fixed" else None
    if smallest and not given_micro:  # ramp / adaptive: micro-batches of the smallest batch, the rest accumulation
        if unit == "rows" and t.global_batch_tokens:
            smallest = smallest // seq_len if smallest % seq_len == 0 else 0
        if smallest and smallest % ranks == 0:
            given_micro = smallest // ranks
    micro = given_micro or max(total // ranks, 1)
    if micro * ranks > total or total % (micro * ranks):
        per = f" x {ranks} ranks" if ranks > 1 else ""
        raise UserError(f"global batch of {total} {unit} is not a whole number of {name}={micro}{per} micro-batches")
    return BatchPlan(micro, total // (micro * ranks), unit, seq_len, ranks)


def resolve_config(cfg: Config, data: TaskData) -> Config:
    """Fill values the config left to the data (vocab size, classes, pad id, base_lr) and check they fit."""
    model, tok = cfg.model, data.tokenizer
    if model.vocab_size == 0:
        model = dataclasses.replace(model, vocab_size=tok.vocab_size)
    elif model.vocab_size < tok.vocab_size:
        raise UserError(f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    if get_task(cfg.task).labelled:
        n = len(data.labels)
        if model.num_classes == 0:
            model = dataclasses.replace(model, num_classes=n)
        elif model.num_classes < n:
            raise UserError(f"model.num_classes={model.num_classes} but the data has {n} labels")
    if cfg.task != "lm" and model.pad_id is None:
        model = dataclasses.replace(model, pad_id=tok.pad_id)
    return dataclasses.replace(cfg, model=model)


@dataclasses.dataclass
class RunSetup:
    """A run's resolved config, its data streams and batch plan, and the lines that say what was resolved."""

    cfg: Config
    data: TaskData
    plan: BatchPlan
    notes: list[str]


def setup_run(cfg: Config, device: torch.device, dist: Dist = ONE_PROCESS, progress: bool = True,
              saved: Path | None = None) -> RunSetup:
    """Resolve every unset key, prepare (or reuse) the data, plan the batch and open the training stream.

    ``saved``: a checkpoint of this run directory; keys the config leaves unset take its resolved values,
    so a resumed run keeps its model, batch and budget. Every rank resolves the same config (a measured
    device speed is rank 0's).
    """
    if saved is not None:
        cfg = fill_unset_from(load_config(saved / "config.yaml"), cfg)
    elif cfg.train.init_from:  # the model of the run it starts from, where this config leaves keys unset
        from bigbatch.train.checkpoint import resolve_checkpoint

        init_dir = resolve_checkpoint(cfg.train.init_from)
        cfg = inherit_from_init(load_config(init_dir / "config.yaml"), init_dir, cfg)
    cfg, notes = resolve_before_data(cfg)
    t = cfg.train
    if cfg.task == "lm" or t.micro_batch_tokens or t.micro_batch_size or t.global_batch_size:
        plan_batch(cfg, dist.world_size)  # a batch that cannot be planned fails now, before any data is prepared
    preparer = dist.local_rank == 0
    shard_dir = shard_dir_for(cfg, progress, preparer)
    stats = DataStats.from_shards(shard_dir, read_manifest(shard_dir), cfg.task)
    peak = None
    m = cfg.model
    if cfg.train.max_time_s and (m.d_model is None or m.n_layers is None or m.dropout is None):
        from bigbatch.train.bench import matmul_peak

        peak = matmul_peak(str(device), n=1024, reps=5)["peak_flops"] if dist.is_main else None
        peak = dist.broadcast(peak)
    cfg, more = resolve_from_data(cfg, stats, dist.world_size, peak)
    plan = plan_batch(cfg, dist.world_size)
    data = build_data(cfg, plan.micro, dist.rank, dist.world_size, progress=progress, preparer=preparer)
    cfg = resolve_config(cfg, data)
    return RunSetup(cfg, data, plan, notes + more)


def global_batch_for_scaling(cfg: Config, plan: BatchPlan) -> int:
    """The global batch in reference_batch's units: tokens if global_batch_tokens is set, else examples."""
    if plan.unit == "rows":
        return plan.total * plan.seq_len if cfg.train.global_batch_tokens else plan.total
    return plan.total
