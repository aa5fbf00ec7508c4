"""Attention weights of a trained model on one input, and heatmaps of them (`bigbatch attention`).

    maps = attention_maps(model, task, tokenizer, "def f(x):")     # every layer's self (and cross) attention
    plot_attention(maps, "attn.png", layer=0, head="all")

The weights are the ones the model used: each MultiHeadAttention is switched to record the per-head
softmax(QKᵀ/√d_k + mask) of its own forward pass (``MultiHeadAttention.record``), not recomputed here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from bigbatch.errors import UserError
from bigbatch.nn.attention import MultiHeadAttention


@dataclasses.dataclass
class AttentionMap:
    """One attention layer's weights on the input: (n_heads, queries, keys), with the tokens of both axes."""

    stack: str  # "encoder", "decoder" (self-attention) or "cross" (decoder queries over encoder keys)
    layer: int
    weights: Tensor
    queries: list[str]
    keys: list[str]


def _layers(model) -> list[tuple[str, int, MultiHeadAttention]]:
    found = []
    for stack_name in ("encoder", "decoder"):
        stack = getattr(model, stack_name, None)
        for i, block in enumerate(getattr(stack, "blocks", [])):
            found.append((stack_name, i, block.attn))
            if getattr(block, "cross_attn", None) is not None:
                found.append(("cross", i, block.cross_attn))
    return found


def _token_strings(tokenizer, ids) -> list[str]:
    """One printable label per token id (a partial UTF-8 byte shows as its hex value)."""
    labels = []
    for i in ids:
        text = tokenizer.decode([int(i)])
        if not text or "\ufffd" in text:
            text = f"<{int(i)}>" if int(i) >= 256 else f"0x{int(i):02x}"
        labels.append(text.replace("\n", "\\n").replace("\t", "\\t"))
    return labels


def attention_maps(model, task: str, tokenizer, text: str, max_len: int, max_new_tokens: int = 64) -> list[AttentionMap]:
    """Every attention layer of ``model`` (eval mode) on ``text``. lm and classify: the text's tokens;
    translate: the source, and the model's own greedy translation of it as the decoder's input."""
    from bigbatch.nn.generate import decoder_start, translate

    ids = torch.from_numpy(tokenizer.encode(text, special=task != "lm")[:max_len].astype("int64"))[None]
    if ids.size(1) == 0:
        raise UserError("the input text is empty: give at least one character")
    layers = _layers(model)
    for _, _, attn in layers:
        attn.record, attn.recorded = True, None
    try:
        with torch.no_grad():
            if task == "translate":
                out = translate(model, ids, decoder_start(model, tokenizer), tokenizer.eos_id, min(max_new_tokens, max_len - 1))[0]
                tgt = torch.tensor([[decoder_start(model, tokenizer), *out]], dtype=torch.long)
                for _, _, attn in layers:
                    attn.recorded = None  # only the teacher-forced pass over the finished translation
                model(ids, tgt)
                queries = ["<bos>", *_token_strings(tokenizer, out)]
            elif task == "classify":
                model(ids, torch.ones_like(ids, dtype=torch.bool))
                queries = _token_strings(tokenizer, ids[0])
            else:
                model(ids)
                queries = _token_strings(tokenizer, ids[0])
        source = _token_strings(tokenizer, ids[0])
        maps = []
        for stack, i, attn in layers:
            keys = source if stack in ("encoder", "cross") else queries
            rows = source if stack == "encoder" else queries
            maps.append(AttentionMap(stack, i, attn.recorded[0].float(), rows, keys))
        return maps
    finally:
        for _, _, attn in layers:
            attn.record, attn.recorded = False, None


def _save(fig, out: str | Path) -> Path:
    """Write ``fig`` to the PNG ``out`` (its folder made), closing it; one line where it cannot be written."""
    import matplotlib.pyplot as plt

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110, bbox_inches="tight")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write it ({e.strerror})") from None
    finally:
        plt.close(fig)
    return out


def select(maps: list[AttentionMap], stack: str | None, layer: int) -> AttentionMap:
    """The map of ``stack`` (None: cross for a translator, else the model's only stack) at ``layer``."""
    stacks = sorted({m.stack for m in maps})
    if stack is None:
        stack = "cross" if "cross" in stacks else stacks[0]
    if stack not in stacks:
        raise UserError(f"--stack {stack}: this model has {', '.join(stacks)}")
    chosen = [m for m in maps if m.stack == stack]
    if not -len(chosen) <= layer < len(chosen):
        raise UserError(f"--layer {layer}: the {stack} attention has layers 0..{len(chosen) - 1}")
    return chosen[layer]


def plot_attention(chosen: AttentionMap, out: str | Path, head: str = "all") -> Path:
    """Heatmaps of one layer: every head side by side (``head`` "all") or head N; queries down, keys across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_heads = chosen.weights.size(0)
    if head == "all":
        heads = list(range(n_heads))
    else:
        try:
            heads = [int(head)]
        except ValueError:
            raise UserError(f"--head {head}: expected a head number or all") from None
        if not 0 <= heads[0] < n_heads:
            raise UserError(f"--head {head}: this layer has heads 0..{n_heads - 1}")
    L, S = len(chosen.queries), len(chosen.keys)
    cell = 0.22 if max(L, S) > 30 else 0.35
    width, height = max(3.0, S * cell), max(3.0, L * cell)
    fig, axes = plt.subplots(1, len(heads), figsize=(width * len(heads) + 1.0, height + 1.0), squeeze=False)
    for ax, h in zip(axes[0], heads):
        image = ax.imshow(chosen.weights[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(S), chosen.keys, rotation=90, fontsize=7)
        ax.set_yticks(range(L), chosen.queries, fontsize=7)
        ax.set_title(f"{chosen.stack} layer {chosen.layer} head {h}", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    return _save(fig, out)


# --------------------------------------------------------------------------- vision: attention rollout


def image_attention_maps(model, pixels: Tensor) -> list[AttentionMap]:
    """Every encoder layer's attention of a ViT on one image ``pixels`` (H, W, C); tokens are named by their
    patch (row, column), "cls" for a class token."""
    layers = _layers(model)
    for _, _, attn in layers:
        attn.record, attn.recorded = True, None
    try:
        with torch.no_grad():
            model(pixels[None])
        g = model.grid
        names = (["cls"] if model.cls is not None else []) + [f"{r},{c}" for r in range(g) for c in range(g)]
        return [AttentionMap(stack, i, attn.recorded[0].float(), names, names) for stack, i, attn in layers]
    finally:
        for _, _, attn in layers:
            attn.record, attn.recorded = False, None


def attention_rollout(maps: list[AttentionMap], has_cls: bool) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): each layer's head-averaged attention with the residual path
    added (0.5 A + 0.5 I, rows renormalised), multiplied from the first layer to the last; the result's row
    of the class token (or, with mean pooling, the mean of all rows: every token feeds the output) over the
    patches, normalised to sum to 1 -> (n_patches,)."""
    rollout = None
    for m in maps:
        a = m.weights.mean(dim=0)
        a = 0.5 * a + 0.5 * torch.eye(a.size(0))
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    row = rollout[0, 1:] if has_cls else rollout.mean(dim=0)
    return row / row.sum()


def plot_rollout(pixels: Tensor, rollout: Tensor, grid: int, out: str | Path, title: str = "") -> Path:
    """The image, and the image with the rollout (one value per patch, upsampled) laid over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = pixels.numpy()
    grey = image.shape[-1] == 1
    heat = rollout.reshape(grid, grid).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.6))
    for ax in axes:
        ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
        ax.axis("off")
    h, w = image.shape[:2]
    shown = axes[1].imshow(heat, cmap="inferno", alpha=0.55, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                           interpolation="bilinear")
    axes[0].set_title("input", fontsize=9)
    axes[1].set_title(title or "attention rollout", fontsize=9)
    fig.colorbar(shown, ax=axes[1], shrink=0.8)
    return _save(fig, out)
