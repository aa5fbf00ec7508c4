"""The one training loop: global batch -> micro-batches -> exact loss normalisation -> step.

    for each optimiser step:
        fetch the k micro-batches of the global batch, count their targets N
        for each micro-batch: (loss_sum / N).backward()      # sums, divided once by N
        clip, step, schedule; log, evaluate, checkpoint on their cadences
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bigbatch.config import Config, load_config
from bigbatch.data.pipeline import TaskData
from bigbatch.distributed import process
from bigbatch.distributed.parallelize import apply_ac, apply_compile, apply_ddp, apply_fsdp, gradient_sync
from bigbatch.distributed.process import ONE_PROCESS, Dist
from bigbatch.distributed.precision import Precision
from bigbatch.errors import TrainingError, UserError
from bigbatch.evaluate.evaluate import evaluate
from bigbatch.nn.models import build_model, count_parameters, flops_per_token
from bigbatch.tasks import Task, get_task
from bigbatch.train.batch_schedule import BatchSchedule
from bigbatch.train.checkpoint import (find_resumable, load_model, load_training_state, mark_best, run_dir_lock,
                                       save_checkpoint, unwrap, write_text_atomic)
from bigbatch.train.memory import auto_micro_batch, check_model_fits, probe, rows_per_micro_batch
from bigbatch.train.metrics import MetricsLogger, peak_flops
from bigbatch.train.noise import NoiseScale
from bigbatch.train.optim import build_optimizer, build_scheduler, scale_for_batch
from bigbatch.train.report import report
from bigbatch.train.setup import BatchPlan, global_batch_for_scaling, setup_run, subnormals_flushed
from bigbatch.train.validation import (BLEU_SAMPLE, BestTracker, eval_due, final_batches, metric_for,
                                       periodic_batches)


def _bytes_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _tensor_b64(text) -> torch.Tensor:
    if isinstance(text, torch.Tensor):  # trainer.pt of earlier versions
        return text
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _rng_state() -> dict:
    """This process's random generators as JSON data (torch's and CUDA's byte states in base64)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": _bytes_b64(torch.get_rng_state()),
             "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = [_bytes_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(_tensor_b64(state["torch"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor_b64(s) for s in state["cuda"]])


class _StopSignal:
    """SIGTERM / SIGINT set a flag; the loop finishes its step, checkpoints and stops."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _check_compatible(saved_path: Path, cfg: Config) -> None:
    saved = load_config(saved_path / "config.yaml")
    diff = [f"model.{k}: {getattr(saved.model, k)} -> {getattr(cfg.model, k)}"
            for k in dataclasses.asdict(cfg.model) if getattr(saved.model, k) != getattr(cfg.model, k)]
    if saved.optim.layer_lr_decay != cfg.optim.layer_lr_decay:  # another set of optimizer parameter groups
        diff.append(f"optim.layer_lr_decay: {saved.optim.layer_lr_decay} -> {cfg.optim.layer_lr_decay}")
    if saved.distill.teacher != cfg.distill.teacher:
        diff.append(f"distill.teacher: {saved.distill.teacher} -> {cfg.distill.teacher}")
    if saved.task != cfg.task or diff:
        raise UserError(f"cannot resume {saved_path}: the model differs from the checkpoint's ({'; '.join(diff) or 'task'})")


def _init_from(model: torch.nn.Module, cfg: Config, dist: Dist, labels: list | None) -> None:
    """Load the weights of train.init_from into a new run's model (every rank: the same weights).

    A classifier's head (and pooler) starts fresh where the checkpoint has none, another shape, or other class
    names than this run's data; a learned position table longer than model.max_len keeps its first rows. Any
    other difference is refused."""
    from safetensors.torch import load_file

    from bigbatch.train.checkpoint import checkpoint_asset_files, resolve_checkpoint, verify

    init = resolve_checkpoint(cfg.train.init_from)
    verify(init)
    saved = load_config(init / "config.yaml")
    where = f"train.init_from={cfg.train.init_from}"
    if saved.model.quantized:
        raise UserError(f"{where}: an int8 model cannot be trained; start from the float run it was quantized from")
    if saved.task != cfg.task:
        raise UserError(f"{where}: a task={saved.task} run, this run has task={cfg.task}")
    weights = load_file(str(init / "model.safetensors"))
    mine = model.state_dict()
    saved_labels = checkpoint_asset_files(init).get("labels.json")
    same_labels = labels is None or saved_labels is not None and json.loads(saved_labels) == labels
    fresh, notes = [], []
    for name in list(weights):
        if name.split(".")[0] in ("head", "pooler") and (name not in mine or not same_labels and name.startswith("head.")
                                                          or weights[name].shape != mine[name].shape):
            del weights[name]
        elif name == "embed.pos.weight" and name in mine and weights[name].size(0) > mine[name].size(0):
            notes.append(f"position table cut from {weights[name].size(0)} to {mine[name].size(0)} rows")
            weights[name] = weights[name][: mine[name].size(0)]
    for name in mine:
        if name not in weights and name.split(".")[0] in ("head", "pooler"):
            fresh.append(name)
    if getattr(model, "lm_head", None) is not None and cfg.model.tie_embeddings:
        weights.pop("lm_head.weight", None)  # tied to embed.tok.weight
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        bad = [k for k in missing if k not in fresh and not (k == "lm_head.weight" and cfg.model.tie_embeddings)]
        if bad or unexpected:
            raise ValueError(f"{'missing ' + bad[0] if bad else 'unexpected ' + unexpected[0]}")
    except (ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"{where}: its weights do not fit this run's model ({first}); leave the model keys unset to "
                        "take that run's") from None
    if fresh:
        notes.append(f"new {' and '.join(sorted({k.split('.')[0] for k in fresh}))} "
                     f"({'other classes' if not same_labels else 'not in the checkpoint'})")
    if dist.is_main:
        print(f"weights from {init}" + (f" ({'; '.join(notes)})" if notes else ""), file=sys.stderr)


def _freeze_embeddings(model: torch.nn.Module, cfg: Config, dist: Dist) -> None:
    """train.freeze_embeddings: the input layers (optim.EMBEDDINGS) keep their weights."""
    from bigbatch.train.optim import layer_depth

    frozen = [n for n, p in model.named_parameters() if layer_depth(n, 0) == 0 and p.requires_grad]
    if not frozen:
        raise UserError(f"train.freeze_embeddings: this {type(model).__name__} has no embedding layers to freeze")
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    if dist.is_main:
        tied = " (and the output projection tied to them)" if getattr(model, "lm_head", None) is not None \
            and cfg.model.tie_embeddings else ""
        print(f"frozen: {len(frozen)} embedding tensors{tied}", file=sys.stderr)


@subnormals_flushed()
def train(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train ``cfg`` into ``run_dir`` (resuming from its latest checkpoint if it has one).

    Prepares the data first when needed (cached by fingerprint). Under torchrun every rank calls this;
    the process group is joined (and left) here. Returns a summary dict: step, tokens, the final
    validation metrics, tokens/s and wall time (rank 0; the other ranks return step and tokens).
    """
    strategy = _strategy(cfg, process.from_env())
    dist, device, started = process.init(cfg.train.device, cfg.train.dist_timeout_s, group=strategy != "none")
    try:
        return _train(cfg, run_dir, progress, dist, device, strategy)
    finally:
        process.shutdown(started)


def _resumable(run_dir: Path, dist: Dist) -> Path | None:
    """Rank 0 picks the checkpoint to resume from (``find_resumable``); every rank gets its answer."""
    found, error = None, None
    if dist.is_main:
        try:
            found = find_resumable(run_dir)
        except UserError as e:
            error = str(e)
    found, error = dist.broadcast((found and str(found), error))
    if error:
        raise UserError(error)
    return Path(found) if found else None


def _strategy(cfg: Config, dist: Dist) -> str:
    parallel = cfg.train.parallel
    if parallel == "auto":
        return "ddp" if dist.enabled else "none"
    if parallel == "none" and dist.enabled:
        raise UserError(f"train.parallel=none with {dist.world_size} processes would train {dist.world_size} "
                        "separate models; use ddp or fsdp (or auto)")
    return parallel


def _train(cfg: Config, run_dir, progress: bool, dist: Dist, device: torch.device, strategy: str) -> dict:
    wall_start = time.time()
    progress = progress and dist.is_main
    run_dir = Path(run_dir or dist.broadcast(str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir, enabled=dist.is_main):  # one process (group) writes a run directory at a time
        return _train_locked(cfg, run_dir, progress, dist, device, strategy, wall_start)


def _train_locked(cfg: Config, run_dir: Path, progress: bool, dist: Dist, device: torch.device, strategy: str,
                  wall_start: float) -> dict:
    ckpt = _resumable(run_dir, dist)
    if ckpt is None and cfg.train.init_from:  # a Hugging Face checkpoint: imported into RUN_DIR/pretrained first
        from bigbatch.interop.hf import pretrained_run

        found, error = None, None
        if dist.is_main:
            try:
                found = pretrained_run(cfg.train.init_from, run_dir)
            except UserError as e:
                error = str(e)
        found, error = dist.broadcast((found and str(found), error))
        if error:
            raise UserError(error)
        if found:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=found))
    if ckpt is None and dist.is_main:
        # the config as given, before data preparation (minutes on a large source): a run stopped there is
        # restarted by `bigbatch train --run-dir DIR` with its own config, not the embedded default
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    setup = setup_run(cfg, device, dist, progress, saved=ckpt)
    cfg, data, plan = setup.cfg, setup.data, setup.plan
    if dist.is_main and setup.notes:
        print("resolved from the task and the data: " + "; ".join(setup.notes), file=sys.stderr)
    valid = data.loader("valid")

    check_model_fits(cfg, device, dist.world_size)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.task, cfg.model).to(device)
    if ckpt is not None:
        _check_compatible(ckpt, cfg)
    elif cfg.train.init_from:
        _init_from(model, cfg, dist, data.labels if get_task(cfg.task).labelled else None)
    if cfg.train.freeze_embeddings:
        _freeze_embeddings(model, cfg, dist)
    objective = functools.partial(get_task(cfg.task).objective, label_smoothing=cfg.train.label_smoothing or 0.0)
    if cfg.distill.teacher:
        from bigbatch.compress.distill import Distiller, init_from_teacher, load_teacher

        teacher = load_teacher(cfg, data, device)
        if ckpt is None and not cfg.train.init_from and cfg.distill.init == "auto":
            line = init_from_teacher(model, teacher)
            if dist.is_main:
                print(line, file=sys.stderr)
        objective = functools.partial(Distiller(get_task(cfg.task), teacher, cfg.distill.temperature,
                                                cfg.distill.alpha), label_smoothing=cfg.train.label_smoothing or 0.0)
        if dist.is_main:
            print(f"distillation: teacher {cfg.distill.teacher}, T={cfg.distill.temperature:g}, "
                  f"alpha={cfg.distill.alpha:g}", file=sys.stderr)

    fpt = flops_per_token(model, get_task(cfg.task).context_len(cfg))
    precision = Precision(cfg.train.precision, device)
    if cfg.train.micro_batch_size == "auto" and plan.unit != "tokens":
        micro = auto_micro_batch(model, cfg, plan.micro * plan.accum_steps, device, precision)
        micro = dist.min(micro, device)  # ranks may have found different sizes (CUDA): take the smallest
        plan = dataclasses.replace(plan, micro=micro, accum_steps=plan.micro * plan.accum_steps // micro)
        data.micro = micro
        data.train = data.loader("train", shuffle=True, seed=cfg.train.seed)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_size=micro))
    batch = _batch_schedule(cfg, plan)
    reference = batch.units if cfg.train.batch_schedule != "fixed" else None  # the lr given is the first batch's
    optim, scaling = scale_for_batch(cfg.optim, reference or global_batch_for_scaling(cfg, plan))
    if reference and cfg.optim.reference_batch:
        reference = cfg.optim.reference_batch
    cfg = dataclasses.replace(cfg, optim=optim)
    if dist.is_main:
        if scaling:
            print(scaling, file=sys.stderr)
        _print_header(cfg, model, plan, device, fpt, data, strategy)
    if cfg.train.activation_checkpointing:
        apply_ac(model)
    if cfg.train.compile:
        apply_compile(model)
    if strategy == "ddp":
        model = apply_ddp(model, device)
    elif strategy == "fsdp":
        model = apply_fsdp(model, cfg.train.precision, cfg.train.fsdp_reshard)
    probe(model, cfg, rows_per_micro_batch(cfg, plan.micro), device, precision)  # an OOM now, not hours in
    if strategy == "ddp":
        model.local_grad_norm.take()  # the probe's gradient is not training's
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
    if dist.enabled:
        torch.manual_seed(cfg.train.seed + 1 + dist.rank)  # dropout differs across ranks

    state, noise_state = {"step": 0, "tokens": 0}, None
    if ckpt is not None:
        saved = load_training_state(ckpt, model, optimizer, dist, verified=True)
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            precision.scaler.load_state_dict(saved["scaler"])
        elif precision.scaler.is_enabled() and dist.is_main:
            print(f"note: {ckpt.name} holds no fp16 gradient-scaler state (an earlier version, or not an fp16 run); "
                  "the loss scale starts afresh", file=sys.stderr)
        data.train.load_state_dict(saved["data"])
        _restore_rng(saved["rng"], dist, cfg.train.seed)
        state = {"step": saved["step"], "tokens": saved["tokens"]}
        batch.load_state_dict(saved.get("batch") or {})
        noise_state = saved.get("noise")
        clocks = (saved.get("train_seconds", 0.0), saved.get("last_eval_clock", 0.0), saved.get("best"),
                  saved.get("early_stopped", False))
        if dist.is_main:
            print(f"resuming {run_dir} from {ckpt.name} (step {state['step']}, {state['tokens']:,} tokens)",
                  file=sys.stderr)
    if dist.is_main:
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
        data.save_to_run(run_dir)
    ctx = _Context(cfg, plan, model, optimizer, scheduler, data, valid, device, run_dir, objective,
                   MetricsLogger(run_dir, resume_step=state["step"], enabled=dist.is_main),  # fresh: rows of a dead try go
                   peak_flops(device, cfg.train.precision, cfg.train.peak_flops), fpt, dist=dist, strategy=strategy,
                   precision=precision, start_tokens=state["tokens"])
    ctx.best = BestTracker(metric_for(cfg, strategy))
    ctx.batch, ctx.reference_units = batch, reference
    if reference:
        scheduler.batch_factor = batch.lr_factor(reference)
    if noise_state:
        ctx.noise.load_state_dict(noise_state)
    if ckpt is not None:  # the budget, cadence and best-so-far carry over: a resumed run ends where it would have
        ctx.train_seconds = ctx.clock = ctx.start_seconds = clocks[0]
        ctx.last_eval_clock = clocks[1]
        if clocks[2] and clocks[2]["metric"] == ctx.best.metric:
            ctx.best.load_state_dict(clocks[2])
        ctx.early_stopped, ctx.saved_step = clocks[3], state["step"]
    resumed_step = state["step"] if ckpt is not None else None
    try:
        with _StopSignal() as stop:
            _run(ctx, state, stop, progress)
        if ctx.stopped:
            return {"run_dir": str(run_dir), "stopped_by_signal": stop.signum or signal.SIGTERM, **state}
        finished = _finished_before(run_dir, state, resumed_step, dist, ctx.early_stopped)
        return finished if finished is not None else _finish(ctx, state, time.time() - wall_start)
    finally:
        ctx.logger.close()


def _finished_before(run_dir: Path, state: dict, resumed_step: int | None, dist: Dist,
                     early_stopped: bool) -> dict | None:
    """A run resumed after it had ended (no step trained now, and its summary.json is of this very step and
    token count): that summary, without evaluating again or appending rows; None when anything is left to
    finish (a run killed in its final evaluation, or one that trained further). Rank 0 decides for all."""
    result = None
    if dist.is_main and resumed_step is not None and state["step"] == resumed_step:
        try:
            result = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            result = None  # none, or unreadable: finish again, which writes it anew
        if not isinstance(result, dict) or (result.get("step"), result.get("tokens")) != (state["step"], state["tokens"]):
            result = None
        if result is not None:
            how = ("it stopped early (train.patience)" if early_stopped else
                   "raise train.max_time_s / max_steps / epochs to train further")
            print(f"{run_dir} had already finished at step {state['step']}: nothing to train ({how}; its results "
                  f"are in {run_dir / 'summary.json'}; `bigbatch eval` scores it again)", file=sys.stderr)
    done = dist.broadcast(result is not None)
    if not done:
        return None
    return result if dist.is_main else {"run_dir": str(run_dir), "step": state["step"], "tokens": state["tokens"]}


def _restore_rng(saved, dist: Dist, seed: int) -> None:
    """Each rank takes back its own RNG state; on another world size the ranks are seeded afresh."""
    if isinstance(saved, dict):  # one process, or checkpoints of earlier versions
        saved = [saved]
    if len(saved) == dist.world_size:
        _set_rng_state(saved[dist.rank])
    else:
        if dist.is_main:
            print(f"note: the checkpoint holds RNG states of {len(saved)} ranks, this run has {dist.world_size}; "
                  "random streams (dropout) restart from the seed", file=sys.stderr)
        torch.manual_seed(seed + 1 + dist.rank)


@dataclasses.dataclass
class _Context:
    cfg: Config
    plan: BatchPlan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    data: TaskData
    valid: object
    device: torch.device
    run_dir: Path
    objective: object  # (model, batch) -> (loss_sum, n_targets, logs): the task's, or with a teacher's soft targets
    logger: MetricsLogger
    peak: float | None
    flops_per_token: float
    dist: Dist = ONE_PROCESS
    strategy: str = "none"
    precision: Precision | None = None  # the run's one Precision: autocast and the fp16 scaler (checkpointed)
    train_seconds: float = 0.0
    start_tokens: int = 0
    stopped: bool = False  # by a signal (on any rank)
    noise: NoiseScale = dataclasses.field(default_factory=NoiseScale)
    batch: BatchSchedule | None = None
    reference_units: int | None = None  # ramp / adaptive: the batch the lr was given at
    warned_batch: bool = False  # the "far above the noise scale" line, printed once
    best: BestTracker = dataclasses.field(default_factory=lambda: BestTracker("loss"))
    clock: float = 0.0  # rank 0's train_seconds, the same on every rank: schedule, cadence and budget follow it
    last_eval_clock: float = 0.0
    early_stopped: bool = False
    saved_step: int = -1  # the step of the last checkpoint this process wrote
    last_eval_step: int = -1
    start_seconds: float = 0.0  # train_seconds at the start of this process (a resumed run's earlier time)

    @property
    def task(self) -> Task:
        return get_task(self.cfg.task)


def _print_header(cfg, model, plan, device, fpt, data: TaskData, strategy: str) -> None:
    n, n_ne = count_parameters(model), count_parameters(model, non_embedding=True)
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    splits = data.manifest["splits"]
    print(f"model: {type(model).__name__}, {n / 1e6:.2f}M parameters ({n_ne / 1e6:.2f}M non-embedding), "
          f"{fpt / 1e6:.1f} MFLOPs/token", file=sys.stderr)
    if get_task(cfg.task).media:  # stored values are pixels / samples; training "tokens" are patches
        unit = "pixels" if cfg.task == "vision" else "samples"
        sizes = ", ".join(f"{k} {v['n_examples']:,} examples" for k, v in splits.items() if v["n_examples"])
        print(f"data: {cfg.data.source} -> {data.shard_dir}; {sizes}; {unit} stored as {data.manifest['dtype']}; "
              f"{cfg.model.max_len} patch tokens an example", file=sys.stderr)
    else:
        learned = data.tokenizer.vocab_size
        short = (f", of data.vocab_size={cfg.data.vocab_size}: the training text gave no more"
                 if cfg.data.vocab_size and learned < cfg.data.vocab_size * 0.9
                 and data.tokenizer.kind in ("bpe", "unigram") else "")  # a trained one, not a given tokenizer.json
        print(f"data: {cfg.data.source} -> {data.shard_dir}; tokenizer {data.tokenizer.kind} "
              f"({learned} ids{short}); " + ", ".join(f"{k} {v['n_examples']:,} examples / "
                                                               f"{v['n_tokens']:,} tokens" for k, v in splits.items()
                                                               if v["n_examples"]), file=sys.stderr)
    ranks = f"ranks {plan.ranks} ({strategy})" if strategy != "none" else "ranks 1"
    if cfg.train.batch_schedule != "fixed":
        b = _batch_schedule(cfg, plan)
        print(f"batch schedule: {cfg.train.batch_schedule}, {b.units:,} -> at most {b.k_max * b.step_units:,} {b.unit} "
              f"in steps of {b.step_units:,}" + (f", {cfg.train.batch_noise_factor:g} x the noise scale every "
                                                 f"{cfg.train.batch_adapt_every} steps" if b.kind == "adaptive" else
                                                 f" over {cfg.train.batch_ramp_tokens:,} tokens"), file=sys.stderr)
    print(f"batch: {plan.describe()}, accumulation {plan.accum_steps}, {ranks}; lr {cfg.optim.lr:g}; "
          f"device {device}{threads}", file=sys.stderr)


def _batch_schedule(cfg: Config, plan: BatchPlan) -> BatchSchedule:
    tokens = plan.unit == "rows" and bool(cfg.train.global_batch_tokens)
    return BatchSchedule(cfg, plan.micro, plan.accum_steps, plan.ranks, plan.seq_len if tokens else 1,
                         "tokens" if tokens else plan.unit)


def _next_batch(ctx: _Context, state: dict, result: _StepResult, bar) -> None:
    """After a step: the adaptive decision (rank 0's, on every rank), the batch of the next step, the lr that
    follows it; a line for every change, and one when a fixed batch is far above the measured noise scale."""
    batch, t, before = ctx.batch, ctx.cfg.train, ctx.batch.units
    batch.adapt(state["step"], ctx.noise.value, result.n_targets, result.micro_batches, ctx.noise.updates)
    if ctx.dist.enabled and batch.kind == "adaptive" and state["step"] % t.batch_adapt_every == 0:
        batch.k = int(ctx.dist.broadcast(batch.k))
    batch.micro_batches(state["step"], state["tokens"])  # ramp: follows the tokens
    if ctx.reference_units:
        ctx.scheduler.batch_factor = batch.lr_factor(ctx.reference_units)
    if batch.units != before and ctx.dist.is_main:
        why = f" ({t.batch_noise_factor:g} x noise scale {ctx.noise.value:,.0f} targets)" if batch.kind == "adaptive" else ""
        bar.bar.write(f"step {state['step']}: global batch {before:,} -> {batch.units:,} {batch.unit}{why}; "
                      f"lr x{ctx.scheduler.batch_factor:.3g}", file=sys.stderr)
    noise = ctx.noise.value
    if (batch.kind == "fixed" and not ctx.warned_batch and noise and ctx.noise.updates >= 20
            and result.n_targets > 3 * noise and ctx.dist.is_main):
        ctx.warned_batch = True
        bar.bar.write(f"note: the critical batch measured so far is ~{_round(noise)} targets; the global batch of "
                      f"{result.n_targets:,} wastes tokens now; consider train.batch_schedule=adaptive "
                      "(docs/large_batch.md)", file=sys.stderr)


def _round(x: float) -> str:
    return f"{x / 1000:.0f}k" if x >= 1000 else f"{x:.0f}"


def micro_batches_at(step: int, accum_steps: int, batch_warmup_steps: int) -> int:
    """Micro-batches in optimiser step ``step`` (0-based): the batch-size warm-up ramps from 1 to all."""
    if batch_warmup_steps <= 0 or step >= batch_warmup_steps:
        return accum_steps
    return max(1, math.ceil(accum_steps * (step + 1) / batch_warmup_steps))


@dataclasses.dataclass
class _StepResult:
    loss_sum: float  # over the global batch, all ranks
    grad_norm: float
    n_targets: int
    tokens: int
    applied: bool
    signalled: bool  # some rank was asked to stop by a signal
    time_up: bool  # rank 0's clock passed train.max_time_s
    clock: float  # rank 0's seconds of training before this step: every rank's schedule and cadence follow it
    micro_batches: int = 1  # on each rank


def _step(ctx: _Context, precision: Precision, step: int, signalled: bool = False, time_up: bool = False,
          tokens_before: int = 0) -> _StepResult:
    """One optimiser step over the global batch.

    The target count N of the global batch (all micro-batches, all ranks) is known before any
    backward, so every rank scales its summed loss by 1/N and the ranks' gradients are summed, never
    averaged. A non-finite loss or gradient on any rank skips the update on all of them (under fp16
    the gradient scaler makes that call itself). The stop flags travel with the loss, so all ranks
    stop after the same step.
    """
    dist = ctx.dist
    k = ctx.batch.micro_batches(step, tokens_before)
    micro = [ctx.data.train.next_batch() for _ in range(k)]
    n_local, tokens_local = sum(b["n_targets"] for b in micro), sum(ctx.task.input_tokens(b) for b in micro)
    n_total, tokens = (int(x) for x in dist.sum([n_local, tokens_local], ctx.device)) if dist.enabled \
        else (n_local, tokens_local)
    loss_total = torch.zeros((), device=ctx.device)
    objective = ctx.objective
    scaler = precision.scaler
    sq_small = b_small = None
    for i, batch in enumerate(micro):
        batch = {k: v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with gradient_sync(ctx.model, enabled=i == len(micro) - 1):
            with precision.autocast():
                loss_sum, _, _ = objective(ctx.model, batch)
            scaler.scale(loss_sum / n_total).backward()
        loss_total += loss_sum.detach()
        if i == 0 and len(micro) > 1 and not dist.enabled and ctx.strategy != "fsdp":  # |G_small|²: first micro-batch
            sq_small = float(_grad_sq_norm(ctx.model)) * (n_total / micro[0]["n_targets"] / scaler.get_scale()) ** 2
            b_small = micro[0]["n_targets"]
    if dist.enabled:
        if ctx.strategy == "ddp":  # this rank's own gradient, taken before the all-reduce
            sq_local = float(ctx.model.local_grad_norm.take()) * (n_total / n_local / scaler.get_scale()) ** 2
        loss_sum, sq_sum, signals, time_ups, clock = dist.sum(
            [float(loss_total), sq_local if ctx.strategy == "ddp" else 0.0, signalled, time_up and dist.is_main,
             ctx.train_seconds if dist.is_main else 0.0], ctx.device)
        loss_total = torch.tensor(loss_sum)
        if ctx.strategy == "ddp":
            sq_small, b_small = sq_sum / dist.world_size, n_total / dist.world_size
        signalled, time_up = signals > 0, time_ups > 0
    scaler.unscale_(ctx.optimizer)
    clip = ctx.cfg.train.grad_clip or float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), clip)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
    if sq_small is not None:
        ctx.noise.update(sq_small, b_small, float(grad_norm) ** 2, n_total)
    applied = True
    if scaler.is_enabled():
        scaler.step(ctx.optimizer)
        scaler.update()
    elif bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(loss_total)):
        ctx.optimizer.step()
    else:
        applied = False
    ctx.optimizer.zero_grad(set_to_none=True)
    clock = clock if dist.enabled else ctx.train_seconds
    return _StepResult(float(loss_total), float(grad_norm), n_total, tokens, applied, signalled, time_up, clock, k)


def _grad_sq_norm(model: torch.nn.Module) -> torch.Tensor:
    """Σ‖grad‖² over the parameters (one fused norm per tensor list)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).square().sum()


def _done(ctx: _Context, state: dict) -> bool:
    """max_steps or max_tokens reached, or stopped early (the same answer on every rank: all are global)."""
    t = ctx.cfg.train
    return ctx.early_stopped or bool(t.max_steps and state["step"] >= t.max_steps) or bool(t.max_tokens and state["tokens"] >= t.max_tokens)


def _progress(ctx: _Context, state: dict) -> float:
    """Fraction of the run done: of its steps, tokens or seconds, whichever limit is nearest."""
    t = ctx.cfg.train
    done = [state["step"] / t.max_steps if t.max_steps else 0.0,
            state["tokens"] / t.max_tokens if t.max_tokens else 0.0,
            ctx.clock / t.max_time_s if t.max_time_s else 0.0]
    return min(max(done), 1.0)


class _Bar:
    """tqdm over steps when only max_steps bounds the run, else over the run's progress (time / tokens)."""

    def __init__(self, ctx: _Context, state: dict, enabled: bool):
        t = ctx.cfg.train
        self.by_steps = bool(t.max_steps) and not (t.max_tokens or t.max_time_s)
        total, initial = (t.max_steps, state["step"]) if self.by_steps else (1000, int(_progress(ctx, state) * 1000))
        self.bar = tqdm(total=total, initial=initial, unit="step" if self.by_steps else "‰", disable=not enabled,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)

    def update(self, ctx: _Context, state: dict) -> None:
        self.bar.update(1 if self.by_steps else int(_progress(ctx, state) * 1000) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _run(ctx: _Context, state: dict, stop: _StopSignal, progress: bool) -> None:
    t, precision, bad_steps = ctx.cfg.train, ctx.precision, 0
    bar = _Bar(ctx, state, progress)
    window_loss, window_n, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
    ctx.model.train()
    while not _done(ctx, state):
        step_start = time.perf_counter()
        time_up = bool(t.max_time_s) and ctx.train_seconds >= t.max_time_s
        if not ctx.dist.enabled and (stop.signum is not None or time_up):  # one process: stop before the step
            ctx.stopped = stop.signum is not None
            break
        ctx.data.train.drawn.clear()
        result = _step(ctx, precision, state["step"], stop.signum is not None, time_up, state["tokens"])
        loss_sum, grad_norm, n, tokens, applied = (result.loss_sum, result.grad_norm, result.n_targets, result.tokens,
                                                   result.applied)
        state["step"] += 1
        bad_steps = 0 if applied else bad_steps + 1
        if not applied:  # where the step's data came from (rank 0's share), so the bad example can be found
            where = ctx.data.train.describe(ctx.data.train.drawn)
            ctx.logger.log({"step": state["step"], "skipped": True, "loss": float(loss_sum) / n,
                            "grad_norm": float(grad_norm), "data": where})
            if ctx.dist.is_main:
                more = f" and {len(where) - 1} more (metrics.jsonl)" if len(where) > 1 else ""
                ranks = " (rank 0's share)" if ctx.dist.enabled else ""
                print(f"step {state['step']}: loss or gradient not finite, update skipped; its batch{ranks} read "
                      f"{where[0] if where else '?'}{more}", file=sys.stderr)
            if bad_steps >= t.max_bad_steps:
                raise TrainingError(f"loss or gradient not finite for {bad_steps} steps in a row (step {state['step']}); "
                                    f"the last good checkpoint is in {ctx.run_dir / 'checkpoints'}; try a lower optim.lr")
        state["tokens"] += tokens
        window_loss, window_n, window_tokens = window_loss + loss_sum, window_n + n, window_tokens + tokens
        ctx.train_seconds += time.perf_counter() - step_start
        ctx.clock = result.clock if ctx.dist.enabled else ctx.train_seconds
        step_batch = result.micro_batches * ctx.batch.step_units  # this step's global batch
        _next_batch(ctx, state, result, bar)
        ctx.scheduler.progress = _progress(ctx, state)
        ctx.scheduler.step()
        bar.update(ctx, state)
        if state["step"] % t.log_every == 0 or state["step"] == t.max_steps:
            seconds = time.perf_counter() - window_start
            loss = float(window_loss) / window_n
            tps = window_tokens / seconds
            mfu = tps * ctx.flops_per_token / (ctx.peak * ctx.dist.world_size) if ctx.peak else None  # per device
            row = {"step": state["step"], "tokens": state["tokens"], "loss": loss, "lr": ctx.scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "tokens_per_s": tps, "mfu": mfu, "elapsed_s": ctx.train_seconds,
                   "global_batch": step_batch}
            if ctx.noise.value is not None:
                row["noise_scale"] = ctx.noise.value  # B_simple, in targets (tokens for LM / translation)
            if precision.scaler.is_enabled():
                row["loss_scale"] = precision.scaler.get_scale()  # fp16: the gradient scaler's current scale
            if hasattr(ctx.data.train, "padding_fraction"):
                row["padding_fraction"] = ctx.data.train.padding_fraction
            ctx.logger.log(row)
            bar.bar.set_postfix(step=state["step"], loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            window_loss, window_n, window_tokens = 0.0, 0, 0
        last = _done(ctx, state) or result.time_up
        saved = False
        if not last and eval_due(ctx.cfg, state["step"], ctx.clock, ctx.last_eval_clock):
            ctx.last_eval_clock, ctx.last_eval_step = ctx.clock, state["step"]
            evaluated = _evaluate(ctx, state, final=False)
            improved = ctx.best.update(state["step"], evaluated)
            if ctx.dist.is_main:  # through tqdm, so a bar stays intact; without one it is the only sign
                shown = [f"{k} {evaluated[k]:.4f}" for k in ("loss", "accuracy", "macro_f1", "bleu", "bits_per_byte")
                         if isinstance(evaluated.get(k), (int, float))]
                bar.bar.write(f"valid at step {state['step']}: {', '.join(shown)}", file=sys.stderr)
            if improved or not t.save_every:
                _save(ctx, state, best=improved)
                saved = True
        if t.save_every and state["step"] % t.save_every == 0 and not saved:
            _save(ctx, state)
        if state["step"] % t.log_every == 0:
            window_start = time.perf_counter()
        if result.signalled or result.time_up:  # ranks agree on these after the step
            ctx.stopped = result.signalled
            break
        if ctx.best.patience_spent(t.patience):
            if ctx.dist.is_main:
                print(f"early stop at step {state['step']}: {ctx.best.metric} has not improved for {ctx.best.since} "
                      f"evaluations (best {ctx.best.value:.4f} at step {ctx.best.step})", file=sys.stderr)
            ctx.early_stopped = True
            break
    bar.close()
    if ctx.saved_step != state["step"]:
        _save(ctx, state)
    if ctx.stopped and ctx.dist.is_main:
        print(f"stopped by signal {stop.signum or '(on another rank)'} at step {state['step']}; checkpoint written to "
              f"{ctx.run_dir / 'checkpoints'}", file=sys.stderr)


def _evaluate(ctx: _Context, state: dict, final: bool) -> dict:
    """Validation on every rank (each its share of the split; sums added over the ranks); translation
    BLEU / chrF decoded on rank 0 (a fixed seeded sample) and shared. ``final``: the whole split (BLEU: a
    larger sample), logged with "full": true; otherwise the periodic sample, the same at every evaluation."""
    sharded = ctx.strategy == "fsdp"
    model = ctx.model if sharded else unwrap(ctx.model)  # DDP's forward is not needed to evaluate
    batches = final_batches(ctx.cfg, ctx.valid, not ctx.dist.is_main) if final else periodic_batches(ctx.cfg, ctx.valid)
    result = evaluate(model, ctx.cfg.task, batches, ctx.device,
                      ctx.precision.autocast, ctx.valid.shards.bytes_per_token,
                      ctx.cfg.model.num_classes, dist=ctx.dist, lockstep=sharded and ctx.dist.enabled)
    if ctx.task.decodes and not sharded:  # scores of decoded outputs (BLEU): rank 0 decodes, all get them
        scores = None
        if ctx.dist.is_main:
            one_rank = dataclasses.replace(ctx.data, rank=0, world_size=1).loader("valid")
            sample = BLEU_SAMPLE * (4 if final else 1)
            scores = ctx.task.decoded_scores(model, one_rank.eval_batches(max_examples=sample, seed=ctx.cfg.train.seed),
                                             ctx.data.tokenizer, ctx.device)
        result.update(ctx.dist.broadcast(scores))
    result.pop("confusion", None)  # a matrix: for `bigbatch eval` and its PNG, not for every metrics row
    ctx.logger.log({"step": state["step"], "tokens": state["tokens"], "split": "valid", **result,
                    **({"full": True} if final else {})})
    return result


def _save(ctx: _Context, state: dict, best: bool = False) -> None:
    """A checkpoint (every rank takes part): rank 0's data position (the same global position on all
    ranks), every rank's RNG state, the run's clock and best-so-far; ``best`` marks it checkpoints/best."""
    rng = ctx.dist.gather(_rng_state())
    trainer_state = {"scheduler": ctx.scheduler.state_dict(), "data": ctx.data.train.state_dict(),
                     "rng": rng, "noise": ctx.noise.state_dict(), "world_size": ctx.dist.world_size,
                     "parallel": ctx.strategy, "train_seconds": ctx.clock, "last_eval_clock": ctx.last_eval_clock,
                     "best": ctx.best.state_dict(), "early_stopped": ctx.early_stopped, "batch": ctx.batch.state_dict(),
                     "scaler": ctx.precision.scaler.state_dict(), **state}
    save_checkpoint(ctx.run_dir / "checkpoints", state["step"], ctx.model, ctx.optimizer, trainer_state,
                    ctx.cfg, ctx.cfg.train.keep_last, ctx.dist, best=best, assets=ctx.data.assets())
    ctx.saved_step = state["step"]


def _finish(ctx: _Context, state: dict, wall_s: float) -> dict:
    """The final model is scored on the periodic sample (comparable with the earlier evaluations, so it
    becomes best only if it is) unless that was just done, then on the whole split for the report."""
    if ctx.last_eval_step != state["step"]:
        if ctx.best.update(state["step"], _evaluate(ctx, state, final=False)) and ctx.dist.is_main:
            mark_best(ctx.run_dir / "checkpoints", state["step"])
    result = _evaluate(ctx, state, final=True)
    ctx.dist.barrier()
    if not ctx.dist.is_main:
        return {"run_dir": str(ctx.run_dir), "step": state["step"], "tokens": state["tokens"]}
    seconds = ctx.train_seconds - ctx.start_seconds
    tps = (state["tokens"] - ctx.start_tokens) / seconds if seconds else None  # no step in this process
    plain = unwrap(ctx.model) if ctx.strategy != "fsdp" else load_model(ctx.run_dir, ctx.device, "latest")[0]
    best = {"best_metric": ctx.best.metric, "best_value": ctx.best.value, "best_step": ctx.best.step,
            "early_stopped": ctx.early_stopped}
    return report(ctx.cfg, plain, ctx.data, ctx.valid, ctx.run_dir, ctx.device, ctx.logger, state, result,
                  {"tokens_per_s": tps, "train_seconds": ctx.train_seconds, "wall_seconds": wall_s,
                   "noise_scale": ctx.noise.value, "world_size": ctx.dist.world_size, "parallel": ctx.strategy,
                   **best})
