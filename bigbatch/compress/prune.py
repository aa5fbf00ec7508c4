"""Structured pruning that makes a model physically smaller: ``bigbatch compress prune``.

Heads (Michel et al. 2019, "Are sixteen heads really better than one?"): the importance of head h is
E_x |∂L(x)/∂ξ_h|, the gradient of the loss with respect to a gate ξ_h = 1 multiplying the head's output,
which equals E_x |Σ attention_h(x) · ∂L/∂attention_h(x)| over the head's output values. It is taken per
example (each example gets its own gates, so the absolute value is of one example's gradient), normalised by
its l2 norm within each layer, and the least important heads of the whole model are removed. Feed-forward
neurons get the same first-order score with a gate on each hidden unit (Molchanov et al. 2017).

Removal is iterative: ``rounds`` times, importance is measured on the model pruned so far and the next share of
heads and neurons goes. The layers then hold fewer heads (each keeps d_model / n_heads dimensions; a layer may
keep none) and narrower feed-forward layers, recorded in model.layer_heads / model.layer_d_ff so the run loads
as the small model it is. Optional recovery fine-tuning runs the ordinary trainer on the run's own data.

``unstructured``: global magnitude pruning (torch.nn.utils.prune) of all linear weights, for comparison; the
zeros stay in dense matrices, so it saves neither time nor (uncompressed) space.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bigbatch.errors import UserError
from bigbatch.nn.models import attention_layers, feed_forward_layers


def _fraction(name: str, value: float) -> float:
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise UserError(f"--{name} {value}: expected a fraction in [0, 1)")
    return value


class _Gates:
    """Per-example gates (ones, requiring grad) on each attention head's output and each hidden unit of the
    feed-forward layers, put in by forward pre-hooks on out_proj / fc2; ``scores`` accumulates Σ_x |∂L/∂gate|."""

    def __init__(self, model: nn.Module):
        self.attn, self.ffn = attention_layers(model), feed_forward_layers(model)
        self.head_scores = [torch.zeros(m.n_heads) for _, m in self.attn]
        self.ffn_scores = [torch.zeros(m.fc1.out_features) for _, m in self.ffn]
        self.live: list[tuple[Tensor, Tensor]] = []  # (gate, the score tensor it adds to) of this forward pass
        self.hooks = [m.out_proj.register_forward_pre_hook(self._head_hook(m, i)) for i, (_, m) in enumerate(self.attn)]
        self.hooks += [m.fc2.register_forward_pre_hook(self._ffn_hook(i)) for i, (_, m) in enumerate(self.ffn)]

    def _head_hook(self, module, i):
        def hook(_, inputs):
            (x,) = inputs  # (B, L, H · head_dim)
            if module.n_heads == 0:
                return None
            gate = torch.ones(x.size(0), 1, module.n_heads, 1, device=x.device, requires_grad=True)
            self.live.append((gate, self.head_scores[i]))
            shape = x.shape
            return (x.view(shape[0], shape[1], module.n_heads, module.head_dim) * gate).view(shape),
        return hook

    def _ffn_hook(self, i):
        def hook(_, inputs):
            (x,) = inputs  # (B, L, d_ff)
            gate = torch.ones(x.size(0), 1, x.size(-1), device=x.device, requires_grad=True)
            self.live.append((gate, self.ffn_scores[i]))
            return (x * gate,)
        return hook

    def collect(self) -> None:
        """After backward: add each example's |∂L/∂gate| to the scores."""
        for gate, scores in self.live:
            if gate.grad is not None:
                scores += gate.grad.abs().sum(dim=0).flatten().cpu()
        self.live.clear()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def importance(model: nn.Module, task, batches: list[dict]) -> tuple[list[Tensor], list[Tensor]]:
    """(head scores per attention layer, neuron scores per feed-forward layer), each normalised by its l2 norm
    within the layer, summed over ``batches`` of the task's objective."""
    gates = _Gates(model)
    model.eval()  # no dropout: the scores of the model as it predicts
    try:
        for batch in batches:
            loss_sum, n, _ = task.objective(model, batch)
            (loss_sum / max(int(n), 1)).backward()
            gates.collect()
    finally:
        gates.remove()
        model.zero_grad(set_to_none=True)
    norm = lambda s: s / s.norm().clamp(min=1e-12)  # noqa: E731
    return [norm(s) for s in gates.head_scores], [norm(s) for s in gates.ffn_scores]


def _lowest(scores: list[Tensor], k: int, keep_one: bool) -> list[list[int]]:
    """Per layer, the indices to remove: the ``k`` lowest scores over all layers (with ``keep_one``, every layer
    keeps at least one)."""
    pool = sorted((float(v), layer, j) for layer, s in enumerate(scores) for j, v in enumerate(s.tolist()))
    left, out = [len(s) for s in scores], [[] for _ in scores]
    for _, layer, j in pool:
        if k <= 0:
            break
        if keep_one and left[layer] <= 1:
            continue
        out[layer].append(j)
        left[layer] -= 1
        k -= 1
    return out


def prune_structured(model: nn.Module, task, batches: list[dict], heads: float, ffn: float, rounds: int = 5,
                     progress: bool = False) -> dict:
    """Remove ``heads`` of all attention heads and ``ffn`` of all feed-forward neurons, in ``rounds`` rounds
    of importance (measured on ``batches``) and removal, in place. Returns the layer sizes kept."""
    attn, mlp = attention_layers(model), feed_forward_layers(model)
    total_heads = sum(m.n_heads for _, m in attn)
    total_ffn = sum(m.fc1.out_features for _, m in mlp)
    goal_heads, goal_ffn = round(heads * total_heads), round(ffn * total_ffn)
    bar = tqdm(range(rounds), desc="pruning", unit="round", disable=not progress)
    for r in bar:
        want_heads = round(goal_heads * (r + 1) / rounds) - (total_heads - sum(m.n_heads for _, m in attn))
        want_ffn = round(goal_ffn * (r + 1) / rounds) - (total_ffn - sum(m.fc1.out_features for _, m in mlp))
        if want_heads <= 0 and want_ffn <= 0:
            continue
        head_scores, ffn_scores = importance(model, task, batches)
        for (_, m), drop in zip(attn, _lowest(head_scores, want_heads, keep_one=False)):
            if drop:
                m.keep_heads([h for h in range(m.n_heads) if h not in set(drop)])
        for (_, m), drop in zip(mlp, _lowest(ffn_scores, want_ffn, keep_one=True)):
            if drop:
                m.keep_neurons([j for j in range(m.fc1.out_features) if j not in set(drop)])
    bar.close()
    return {"layer_heads": [m.n_heads for _, m in attn], "layer_d_ff": [m.fc1.out_features for _, m in mlp],
            "heads_removed": total_heads - sum(m.n_heads for _, m in attn),
            "ffn_removed": total_ffn - sum(m.fc1.out_features for _, m in mlp),
            "heads_total": total_heads, "ffn_total": total_ffn}


def prune_unstructured(model: nn.Module, amount: float) -> dict:
    """Zero the ``amount`` smallest-magnitude weights of all linear layers together (global L1), made permanent."""
    import torch.nn.utils.prune as tprune

    layers = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
    seen, unique = set(), []
    for m, name in layers:  # a tied output projection shares its weight with the embedding: prune it once
        if id(m.weight) not in seen:
            seen.add(id(m.weight))
            unique.append((m, name))
    tprune.global_unstructured(unique, pruning_method=tprune.L1Unstructured, amount=amount)
    for m, name in unique:
        tprune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in unique)
    return {"zeroed": zeros, "of": sum(m.weight.numel() for m, _ in unique)}


def _batches(cfg, n_examples: int, seed: int = 0) -> list[dict]:
    """Training batches of about ``n_examples`` examples (LM: rows), the run's micro-batch size."""
    from bigbatch.data.pipeline import build_data
    from bigbatch.train.setup import plan_batch

    plan = plan_batch(cfg)
    data = build_data(cfg, plan.micro, progress=False)
    loader = data.loader("train", shuffle=True, seed=seed)
    batches, seen = [], 0
    while seen < n_examples:
        b = loader.next_batch()
        b = {k: v for k, v in b.items()}
        count = next(v.size(0) for v in b.values() if torch.is_tensor(v))
        batches.append(b)
        seen += count
    return batches


def prune_run(run: str | Path, out: str | Path, heads: float = 0.0, ffn: float = 0.0, unstructured: float = 0.0,
              finetune_steps: int = 0, measure: bool = True, eval_examples: int | None = 2000,
              importance_examples: int = 2048, rounds: int = 5, sets: list[str] = (), progress: bool = True) -> dict:
    """``bigbatch compress prune``: the pruned run as the run directory ``out`` (with ``finetune_steps``: the
    pruned weights in out/pruned/, and ``out`` the fine-tuning run started from them)."""
    from bigbatch import load
    from bigbatch.compress.measure import measure_run, print_comparison
    from bigbatch.config import load_config
    from bigbatch.tasks import get_task
    from bigbatch.train.checkpoint import (checkpoint_asset_files, resolve_checkpoint, write_text_atomic,
                                           write_weights_run)

    heads, ffn, unstructured = _fraction("heads", heads), _fraction("ffn", ffn), _fraction("unstructured", unstructured)
    if eval_examples is not None and eval_examples < 1:
        raise UserError(f"--eval-examples {eval_examples}: expected a number of examples >= 1")
    if finetune_steps < 0:
        raise UserError(f"--finetune-steps {finetune_steps}: expected a number of steps >= 0")
    if unstructured and (heads or ffn):
        raise UserError("--unstructured is the comparison method on its own; give it without --heads / --ffn")
    if unstructured and finetune_steps:
        raise UserError("--unstructured with --finetune-steps: the trainer would regrow the zeroed weights; "
                        "fine-tune structured pruning instead")
    if not (heads or ffn or unstructured):
        raise UserError("nothing to prune: give --heads F and/or --ffn F (fractions in [0, 1)), or --unstructured S")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists and is not empty; give a new directory (nothing is overwritten)")
    ckpt = resolve_checkpoint(run)
    model, cfg = load(ckpt)
    if cfg.model.quantized:
        raise UserError(f"{run}: int8 (model.quantized={cfg.model.quantized}); prune the float run, then quantize")
    if cfg.model.arch != "transformer":
        raise UserError(f"{run}: model.arch={cfg.model.arch}; pruning removes attention heads and feed-forward "
                        "neurons of Transformer models")
    summary = {"compressed_from": str(ckpt)}
    if unstructured:
        summary.update(method="unstructured", amount=unstructured, **prune_unstructured(model, unstructured))
        print(f"zeroed {summary['zeroed']:,} of {summary['of']:,} linear weights by global magnitude (dense "
              "kernels: no faster, no smaller)", file=sys.stderr)
    else:
        batches = _batches(cfg, importance_examples)
        sizes = prune_structured(model, get_task(cfg.task), batches, heads, ffn, rounds, progress)
        summary.update(method="structured", heads=heads, ffn=ffn, **sizes)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, layer_heads=sizes["layer_heads"],
                                                                 layer_d_ff=sizes["layer_d_ff"]))
        print(f"removed {sizes['heads_removed']} of {sizes['heads_total']} attention heads (kept per layer: "
              f"{sizes['layer_heads']}) and {sizes['ffn_removed']:,} of {sizes['ffn_total']:,} feed-forward neurons",
              file=sys.stderr)
    model.eval()
    pruned_dir = out / "pruned" if finetune_steps else out
    if finetune_steps:
        out.mkdir(parents=True, exist_ok=True)
    write_weights_run(pruned_dir, model, cfg, checkpoint_asset_files(ckpt), summary)
    if finetune_steps:
        from bigbatch.train.loop import train

        t = dataclasses.replace(cfg.train, init_from=str(pruned_dir), max_steps=finetune_steps, epochs=None,
                                max_time_s=None, max_tokens=None, patience=None)
        # recovery, not training from scratch: 0.3x the run's peak lr, a short warm-up, linear decay to 0
        o = dataclasses.replace(cfg.optim, lr=cfg.optim.lr * 0.3, reference_batch=None, warmup_steps=None,
                                warmup_fraction=0.05, schedule="linear", min_lr_ratio=0.0, base_lr=None,
                                base_warmup_steps=None)
        tuned = dataclasses.replace(cfg, train=t, optim=o, model_given=[])  # the pruned model, as it is
        tuned = load_config(None, list(sets), base=tuned) if sets else tuned
        print(f"recovery fine-tuning: {finetune_steps} steps on {cfg.data.source}, lr {tuned.optim.lr:g}",
              file=sys.stderr)
        result = train(tuned, out, progress=progress)
        summary["finetune"] = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    if measure:
        runs = [ckpt, pruned_dir] + ([out] if finetune_steps else [])
        rows = [measure_run(p, max_examples=eval_examples) for p in runs]
        print_comparison(rows, ["original", "pruned"] + (["fine-tuned"] if finetune_steps else []))
        summary["measured"] = rows
    write_text_atomic(out / ("compress.json" if finetune_steps else "summary.json"), json.dumps(summary, indent=1))
    return summary
