"""The one training loop: global batch -> micro-batches -> exact loss normalisation -> step.

    for each optimiser step:
        fetch the k micro-batches of the global batch, count their targets N
        for each micro-batch: (loss_sum / N).backward()      # sums, divided once by N
        clip, step, schedule; log, evaluate, checkpoint on their cadences
"""

from __future__ import annotations

import dataclasses
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

from bigbatch.config import Config
from bigbatch.data.pipeline import TaskData, build_data
from bigbatch.distributed.parallelize import apply_ac, apply_compile
from bigbatch.distributed.precision import Precision
from bigbatch.errors import TrainingError, UserError
from bigbatch.evaluate.evaluate import evaluate, translation_scores, unigram_bits_per_byte
from bigbatch.nn.generate import generate
from bigbatch.nn.models import build_model, count_parameters, flops_per_token
from bigbatch.objectives import OBJECTIVES
from bigbatch.train.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from bigbatch.train.memory import auto_micro_batch, probe, rows_per_micro_batch
from bigbatch.train.metrics import MetricsLogger, peak_flops, write_run_plots
from bigbatch.train.noise import NoiseScale
from bigbatch.train.optim import build_optimizer, build_scheduler, scale_for_batch
from bigbatch.train.setup import BatchPlan, global_batch_for_scaling, plan_batch, resolve_config, resolve_device


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    from bigbatch.config import load_config

    saved = load_config(saved_path / "config.yaml")
    diff = [f"model.{k}: {getattr(saved.model, k)} -> {getattr(cfg.model, k)}"
            for k in dataclasses.asdict(cfg.model) if getattr(saved.model, k) != getattr(cfg.model, k)]
    if saved.task != cfg.task or diff:
        raise UserError(f"cannot resume {saved_path}: the model differs from the checkpoint's ({'; '.join(diff) or 'task'})")


def train(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train ``cfg`` into ``run_dir`` (resuming from its latest checkpoint if it has one).

    Prepares the data first when needed (cached by fingerprint). Returns a summary dict: step,
    tokens, the final validation metrics, tokens/s and wall time.
    """
    wall_start = time.time()
    device = resolve_device(cfg.train.device)
    plan = plan_batch(cfg)
    data = build_data(cfg, plan.micro, progress=progress)
    cfg = resolve_config(cfg, data)
    optim, scaling = scale_for_batch(cfg.optim, global_batch_for_scaling(cfg, plan))
    cfg = dataclasses.replace(cfg, optim=optim)
    if scaling:
        print(scaling, file=sys.stderr)
    valid = data.loader("valid")

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.task, cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)

    run_dir = Path(run_dir) if run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    state, noise_state = {"step": 0, "tokens": 0}, None
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        _check_compatible(ckpt, cfg)
        saved = load_training_state(ckpt, model, optimizer)
        scheduler.load_state_dict(saved["scheduler"])
        data.train.load_state_dict(saved["data"])
        _set_rng_state(saved["rng"])
        state = {"step": saved["step"], "tokens": saved["tokens"]}
        noise_state = saved.get("noise")
        print(f"resuming {run_dir} from {ckpt.name} (step {state['step']}, {state['tokens']:,} tokens)", file=sys.stderr)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    data.save_to_run(run_dir)

    fpt = flops_per_token(model, cfg.data.seq_len if cfg.task == "lm" else cfg.model.max_len)
    precision = Precision(cfg.train.precision, device)
    if cfg.train.micro_batch_size == "auto" and plan.unit != "tokens":
        micro = auto_micro_batch(model, cfg, plan.micro * plan.accum_steps, device, precision)
        plan = dataclasses.replace(plan, micro=micro, accum_steps=plan.micro * plan.accum_steps // micro)
        state_of_loader = data.train.state_dict()
        data.micro = micro
        data.train = data.loader("train", shuffle=True, seed=cfg.train.seed)
        if ckpt is not None:
            data.train.load_state_dict(state_of_loader)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_size=micro))
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    _print_header(cfg, model, plan, device, fpt, data)
    probe(model, cfg, rows_per_micro_batch(cfg, plan.micro), device, precision)  # an OOM now, not hours in
    if cfg.train.activation_checkpointing:
        apply_ac(model)
    if cfg.train.compile:
        apply_compile(model)
    ctx = _Context(cfg, plan, model, optimizer, scheduler, data, valid, device, run_dir,
                   MetricsLogger(run_dir, resume_step=state["step"] if ckpt else None),
                   peak_flops(device, cfg.train.precision, cfg.train.peak_flops), fpt, start_tokens=state["tokens"])
    if noise_state:
        ctx.noise.load_state_dict(noise_state)
    try:
        with _StopSignal() as stop:
            _run(ctx, state, stop, progress)
        if stop.signum is not None:
            return {"run_dir": str(run_dir), "stopped_by_signal": stop.signum, **state}
        return _finish(ctx, state, time.time() - wall_start)
    finally:
        ctx.logger.close()


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
    logger: MetricsLogger
    peak: float | None
    flops_per_token: float
    train_seconds: float = 0.0
    start_tokens: int = 0
    noise: NoiseScale = dataclasses.field(default_factory=NoiseScale)


def _print_header(cfg, model, plan, device, fpt, data: TaskData) -> None:
    n, n_ne = count_parameters(model), count_parameters(model, non_embedding=True)
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    splits = data.manifest["splits"]
    print(f"model: {type(model).__name__}, {n / 1e6:.2f}M parameters ({n_ne / 1e6:.2f}M non-embedding), "
          f"{fpt / 1e6:.1f} MFLOPs/token", file=sys.stderr)
    print(f"data: {cfg.data.source} -> {data.shard_dir}; tokenizer {data.tokenizer.kind} ({data.tokenizer.vocab_size} ids); "
          + ", ".join(f"{k} {v['n_examples']:,} examples / {v['n_tokens']:,} tokens" for k, v in splits.items()
                      if v["n_examples"]), file=sys.stderr)
    print(f"batch: {plan.describe()}, accumulation {plan.accum_steps}, ranks 1; lr {cfg.optim.lr:g}; "
          f"device {device}{threads}", file=sys.stderr)


def _batch_tokens(batch: dict) -> int:
    """Real (non-pad) input tokens of a batch."""
    if "src_mask" in batch:
        return int(batch["src_mask"].sum() + batch["tgt_mask"].sum())
    if "attention_mask" in batch and batch["attention_mask"].dim() == 2:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].size(0) * (batch["input_ids"].size(1) - 1)


def micro_batches_at(step: int, accum_steps: int, batch_warmup_steps: int) -> int:
    """Micro-batches in optimiser step ``step`` (0-based): the batch-size warm-up ramps from 1 to all."""
    if batch_warmup_steps <= 0 or step >= batch_warmup_steps:
        return accum_steps
    return max(1, math.ceil(accum_steps * (step + 1) / batch_warmup_steps))


def _step(ctx: _Context, precision: Precision, step: int) -> tuple[torch.Tensor, torch.Tensor, int, int, bool]:
    """One optimiser step over the global batch -> (summed loss, grad norm, target count, tokens, applied).

    A non-finite loss or gradient skips the update (``applied`` False); under fp16 the gradient
    scaler makes that call itself.
    """
    k = micro_batches_at(step, ctx.plan.accum_steps, ctx.cfg.train.batch_warmup_steps)
    micro = [ctx.data.train.next_batch() for _ in range(k)]
    n_total = sum(b["n_targets"] for b in micro)  # targets of the whole global batch
    loss_total = torch.zeros((), device=ctx.device)
    objective = OBJECTIVES[ctx.cfg.task]
    scaler = precision.scaler
    sq_small = None
    for i, batch in enumerate(micro):
        batch = {k: v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with precision.autocast():
            loss_sum, _, _ = objective(ctx.model, batch)
        scaler.scale(loss_sum / n_total).backward()
        loss_total += loss_sum.detach()
        if i == 0 and len(micro) > 1:  # the first micro-batch's own gradient: |G_small|² for the noise scale
            sq_small = _grad_sq_norm(ctx.model) * (n_total / micro[0]["n_targets"] / scaler.get_scale()) ** 2
    scaler.unscale_(ctx.optimizer)
    clip = ctx.cfg.train.grad_clip or float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), clip)
    if sq_small is not None:
        ctx.noise.update(float(sq_small), micro[0]["n_targets"], float(grad_norm) ** 2, n_total)
    applied = True
    if scaler.is_enabled():
        scaler.step(ctx.optimizer)
        scaler.update()
    elif bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(loss_total)):
        ctx.optimizer.step()
    else:
        applied = False
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return loss_total, grad_norm, n_total, sum(_batch_tokens(b) for b in micro), applied


def _grad_sq_norm(model: torch.nn.Module) -> torch.Tensor:
    """Σ‖grad‖² over the parameters (one fused norm per tensor list)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).square().sum()


def _stop_reason(ctx: _Context, state: dict, elapsed: float) -> str | None:
    t = ctx.cfg.train
    if state["step"] >= t.max_steps:
        return "max_steps"
    if t.max_tokens and state["tokens"] >= t.max_tokens:
        return "max_tokens"
    if t.max_time_s and elapsed >= t.max_time_s:
        return "max_time_s"
    return None


def _run(ctx: _Context, state: dict, stop: _StopSignal, progress: bool) -> None:
    t, precision, bad_steps = ctx.cfg.train, Precision(ctx.cfg.train.precision, ctx.device), 0
    bar = tqdm(total=t.max_steps, initial=state["step"], unit="step", disable=not progress,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    window_loss, window_n, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
    ctx.model.train()
    while _stop_reason(ctx, state, ctx.train_seconds) is None and stop.signum is None:
        step_start = time.perf_counter()
        loss_sum, grad_norm, n, tokens, applied = _step(ctx, precision, state["step"])
        state["step"] += 1
        bad_steps = 0 if applied else bad_steps + 1
        if not applied:
            ctx.logger.log({"step": state["step"], "skipped": True, "loss": float(loss_sum) / n,
                            "grad_norm": float(grad_norm)})
            print(f"step {state['step']}: loss or gradient not finite, update skipped", file=sys.stderr)
            if bad_steps >= t.max_bad_steps:
                raise TrainingError(f"loss or gradient not finite for {bad_steps} steps in a row (step {state['step']}); "
                                    f"the last good checkpoint is in {ctx.run_dir / 'checkpoints'}; try a lower optim.lr")
        state["tokens"] += tokens
        window_loss, window_n, window_tokens = window_loss + loss_sum, window_n + n, window_tokens + tokens
        ctx.train_seconds += time.perf_counter() - step_start
        bar.update(1)
        if state["step"] % t.log_every == 0 or state["step"] == t.max_steps:
            seconds = time.perf_counter() - window_start
            loss = float(window_loss) / window_n
            tps = window_tokens / seconds
            mfu = tps * ctx.flops_per_token / ctx.peak if ctx.peak else None
            row = {"step": state["step"], "tokens": state["tokens"], "loss": loss, "lr": ctx.scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "tokens_per_s": tps, "mfu": mfu, "elapsed_s": ctx.train_seconds}
            if ctx.noise.value is not None:
                row["noise_scale"] = ctx.noise.value  # B_simple, in targets (tokens for LM / translation)
            if hasattr(ctx.data.train, "padding_fraction"):
                row["padding_fraction"] = ctx.data.train.padding_fraction
            ctx.logger.log(row)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            window_loss, window_n, window_tokens = 0.0, 0, 0
        if t.eval_every and state["step"] % t.eval_every == 0 and state["step"] < t.max_steps:
            _evaluate(ctx, state, t.eval_batches)
        if t.save_every and state["step"] % t.save_every == 0:
            _save(ctx, state)
        if state["step"] % t.log_every == 0:
            window_start = time.perf_counter()
    bar.close()
    _save(ctx, state)
    if stop.signum is not None:
        print(f"stopped by signal {stop.signum} at step {state['step']}; checkpoint written to "
              f"{ctx.run_dir / 'checkpoints'}", file=sys.stderr)


def _evaluate(ctx: _Context, state: dict, max_batches: int | None) -> dict:
    result = evaluate(ctx.model, ctx.cfg.task, ctx.valid.eval_batches(max_batches), ctx.device,
                      Precision(ctx.cfg.train.precision, ctx.device).autocast, ctx.valid.shards.bytes_per_token,
                      ctx.cfg.model.num_classes)
    ctx.logger.log({"step": state["step"], "tokens": state["tokens"], "split": "valid", **result})
    return result


def _save(ctx: _Context, state: dict) -> None:
    trainer_state = {"scheduler": ctx.scheduler.state_dict(), "data": ctx.data.train.state_dict(),
                     "rng": _rng_state(), "noise": ctx.noise.state_dict(), **state}
    save_checkpoint(ctx.run_dir / "checkpoints", state["step"], ctx.model, ctx.optimizer, trainer_state,
                    ctx.cfg, ctx.cfg.train.keep_last)


def _finish(ctx: _Context, state: dict, wall_s: float) -> dict:
    """Final full validation, plots, a sample; prints and returns the summary."""
    result = _evaluate(ctx, state, None)
    write_run_plots(ctx.run_dir)
    summary = {"run_dir": str(ctx.run_dir), "step": state["step"], "tokens": state["tokens"],
               **{f"valid_{k}": v for k, v in result.items()},
               "tokens_per_s": (state["tokens"] - ctx.start_tokens) / ctx.train_seconds if ctx.train_seconds else math.nan,
               "train_seconds": ctx.train_seconds, "wall_seconds": wall_s, "noise_scale": ctx.noise.value}
    line = f"valid: loss {result['loss']:.4f} nats/target"
    if ctx.cfg.task == "lm":
        summary["unigram_bits_per_byte"] = _unigram_baseline(ctx)
        line += f", {result['bits_per_byte']:.3f} bits/byte (unigram baseline {summary['unigram_bits_per_byte']:.3f} bits/byte)"
    elif ctx.cfg.task == "classify":
        line += f", accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}"
    else:
        scores = translation_scores(ctx.model, ctx.valid.eval_batches(), ctx.data.tokenizer, ctx.device, max_sentences=300)
        summary.update(valid_bleu=scores["bleu"], valid_chrf=scores["chrf"])
        ctx.logger.log({"step": state["step"], "split": "valid", "bleu": scores["bleu"], "chrf": scores["chrf"]})
        line += f", BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f} (greedy, {scores['sentences']} sentences)"
        for hyp, ref in scores["examples"]:
            print(f"  hyp: {hyp}\n  ref: {ref}", file=sys.stderr)
    (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{line}; {summary['tokens_per_s']:,.0f} tokens/s, wall {wall_s:.0f} s; run dir {ctx.run_dir}", file=sys.stderr)
    if ctx.cfg.task == "lm":
        _print_sample(ctx)
    return summary


def _unigram_baseline(ctx: _Context) -> float:
    """Bits per byte of the valid split under the train split's token frequencies (first train shard)."""
    train_shard = ctx.data.train.shards.shards[0]
    valid = np.concatenate([s.read(0, s.n_tokens) for s in ctx.valid.shards.shards])
    return unigram_bits_per_byte(train_shard.read(0, train_shard.n_tokens), valid, ctx.data.tokenizer.vocab_size,
                                 ctx.valid.shards.bytes_per_token)


def _print_sample(ctx: _Context) -> None:
    prompt, n, tok = ctx.cfg.train.sample_prompt, ctx.cfg.train.sample_tokens, ctx.data.tokenizer
    if not (prompt and n):
        return
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.train.seed)
    ids = torch.from_numpy(tok.encode(prompt).astype(np.int64))[None].to(ctx.device)
    ctx.model.eval()
    out = generate(ctx.model, ids, n, temperature=0.8, top_k=50, eos_id=tok.eos_id, generator=gen)
    print(f"--- sample (prompt {prompt!r}) ---\n{tok.decode(out[0].tolist())}\n---", file=sys.stderr)
