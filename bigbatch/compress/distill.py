"""Knowledge distillation: a trained teacher's soft targets in the student's objective.

Word-level (Hinton et al. 2015), for every task: with ``distill.teacher`` set, each micro-batch goes through the
teacher too (eval mode, no gradient, the same autocast) and the loss summed over the batch's targets becomes

    (1 - alpha) · CE(student, labels) + alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

(summed, never averaged, like every objective here: the trainer divides by the global batch's target count, so
accumulation and data parallelism stay exact). The teacher is a plain module on every rank, replicated, under
DDP and FSDP alike: it has no gradients or optimizer state, and its weights are the memory a rank needs anyway
to run it.

Sequence-level (Kim & Rush 2016), translation: the student trains on the teacher's beam-search outputs for the
training sources (``bigbatch compress distill --sequence-level``), evaluated on the original references.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigbatch.errors import UserError
from bigbatch.objectives import IGNORE, target_labels


class _Capture:
    """Calls a model and keeps its output (the logits the objective computed)."""

    def __init__(self, model):
        self.model, self.logits = model, None

    def __call__(self, *args, **kwargs):
        self.logits = self.model(*args, **kwargs)
        return self.logits


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float, keep: Tensor | None = None) -> Tensor:
    """T² · Σ KL(softmax(teacher / T) ‖ softmax(student / T)) over the rows of (N, V) logits (``keep``: a bool mask
    of the rows that count), summed."""
    t = temperature
    s = F.log_softmax(student.float() / t, dim=-1)
    p = F.log_softmax(teacher.float() / t, dim=-1)
    kl = (p.exp() * (p - s)).sum(dim=-1)
    if keep is not None:
        kl = kl[keep]
    return kl.sum() * t * t


class Distiller:
    """The task's objective with the teacher's soft targets added: called as ``(model, batch, label_smoothing)``
    like any objective, returns (loss_sum, n_targets, logs) with logs["distill"] the soft-target sum."""

    def __init__(self, task, teacher: nn.Module, temperature: float, alpha: float):
        self.task, self.teacher, self.temperature, self.alpha = task, teacher.eval(), temperature, alpha
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def __call__(self, model, batch: dict, label_smoothing: float = 0.0):
        student = _Capture(model)
        hard, n, logs = self.task.objective(student, batch, label_smoothing)
        teacher = _Capture(self.teacher)
        with torch.no_grad():
            self.task.objective(teacher, batch)
        labels = target_labels(self.task.name, batch)
        s, t = student.logits, teacher.logits
        keep = (labels != IGNORE).reshape(-1) if s.dim() == 3 else None
        soft = soft_target_loss(s.reshape(-1, s.size(-1)), t.reshape(-1, t.size(-1)), self.temperature, keep)
        return (1.0 - self.alpha) * hard + self.alpha * soft, n, {**logs, "distill": soft.detach()}


def load_teacher(cfg, data, device) -> nn.Module:
    """The teacher of ``cfg.distill``, checked against the student's task, tokenizer and labels, on ``device``."""
    from bigbatch import load
    from bigbatch.train.checkpoint import checkpoint_assets, resolve_checkpoint

    where = f"distill.teacher={cfg.distill.teacher}"
    ckpt = resolve_checkpoint(cfg.distill.teacher)
    teacher, tcfg = load(ckpt)
    if tcfg.task != cfg.task:
        raise UserError(f"{where}: a task={tcfg.task} run; the student has task={cfg.task}")
    tokenizer, labels = checkpoint_assets(ckpt, tcfg)
    if _vocab(tokenizer) != _vocab(data.tokenizer):
        raise UserError(f"{where}: its tokenizer differs from the student's; give the student "
                        f"data.tokenizer={ckpt / 'tokenizer.json'} (the teacher's)")
    if tcfg.model.max_len and cfg.model.max_len and tcfg.model.max_len < cfg.model.max_len:
        raise UserError(f"{where}: reads at most {tcfg.model.max_len} tokens, the student {cfg.model.max_len}; set "
                        f"model.max_len={tcfg.model.max_len}")
    if labels is not None and list(labels) != list(data.labels):
        raise UserError(f"{where}: its classes {labels[:5]}... differ from the student data's {list(data.labels)[:5]}...")
    if tcfg.model.vocab_size != cfg.model.vocab_size and cfg.task != "classify" and not data.tokenizer.kind == "pixels":
        raise UserError(f"{where}: output vocabulary {tcfg.model.vocab_size}, the student's {cfg.model.vocab_size}; "
                        "set model.vocab_size to the teacher's")
    return teacher.to(device)


def _vocab(tokenizer):
    inner = getattr(tokenizer, "tok", None) or getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "get_vocab"):
        return inner.get_vocab(with_added_tokens=True)
    return (type(tokenizer).__name__, tokenizer.vocab_size)


_BLOCK = re.compile(r"^(.*\bblocks\.)(\d+)(\..+)$")


def init_from_teacher(student: nn.Module, teacher: nn.Module) -> str:
    """DistilBERT's start: every student tensor from the teacher's of the same name and shape, block i of each
    stack from the teacher's block 2i (every other layer; the last ones where the teacher is shorter). Returns
    a line saying what was copied; copies nothing when any tensor's shape differs."""
    theirs = teacher.state_dict()
    stacks: dict[str, int] = {}
    for key in theirs:
        m = _BLOCK.match(key)
        if m:
            stacks[m.group(1)] = max(stacks.get(m.group(1), 0), int(m.group(2)) + 1)
    plan, mismatch = {}, []
    for key, value in student.state_dict().items():
        m = _BLOCK.match(key)
        source = key
        if m:
            depth = stacks.get(m.group(1), 0)
            source = f"{m.group(1)}{min(2 * int(m.group(2)), depth - 1)}{m.group(3)}"
        if source not in theirs or theirs[source].shape != value.shape:
            mismatch.append(key)
        else:
            plan[key] = theirs[source]
    if mismatch:
        return (f"the student starts from random weights: {len(mismatch)} of its tensors have no teacher tensor of "
                f"the same shape (e.g. {mismatch[0]})")
    student.load_state_dict(plan)
    return "the student starts from the teacher's weights, block i from the teacher's block 2i of each stack"


def distill_run(teacher: str | Path, student: str | Path | None, out: str | Path, sets: list[str] = (),
                sequence_level: bool = False, beam: int = 4, progress: bool = True) -> dict:
    """``bigbatch compress distill``: train the ``student`` config (default: the teacher's config with half
    the layers) with ``distill.teacher`` = the teacher, into the run directory ``out``."""
    from bigbatch import load
    from bigbatch.config import load_config
    from bigbatch.train.checkpoint import resolve_checkpoint
    from bigbatch.train.loop import train

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists and is not empty; give a new directory (nothing is overwritten)")
    ckpt = resolve_checkpoint(teacher)
    _, tcfg = load(ckpt)
    if student is None:
        m = tcfg.model
        half = {k: max(1, getattr(m, k) // 2) for k in ("n_layers", "n_encoder_layers", "n_decoder_layers")
                if getattr(m, k)}
        base = dataclasses.replace(tcfg, model=dataclasses.replace(m, **half, quantized=None, int8_layers=None,
                                                                   layer_heads=None, layer_d_ff=None),
                                   train=dataclasses.replace(tcfg.train, init_from=None))
        cfg = load_config(None, list(sets), base=base)
    else:
        cfg = load_config(student, list(sets))
    if cfg.task != tcfg.task:
        raise UserError(f"--student {student}: task={cfg.task}, the teacher {teacher} has task={tcfg.task}")
    data = cfg.data
    if (ckpt / "tokenizer.json").exists() and str(data.tokenizer) in ("auto", "bpe", "unigram", tcfg.data.tokenizer):
        data = dataclasses.replace(data, tokenizer=str((ckpt / "tokenizer.json").resolve()), vocab_size=0)
    cfg = dataclasses.replace(cfg, data=data, distill=dataclasses.replace(cfg.distill, teacher=str(ckpt.resolve())))
    summary = {"teacher": str(ckpt), "sequence_level": sequence_level}
    if sequence_level:
        if cfg.task != "translate":
            raise UserError(f"--sequence-level is for task=translate (beam outputs as targets), not task={cfg.task}")
        out.mkdir(parents=True, exist_ok=True)
        files = teacher_translations(ckpt, (out / "teacher-data").resolve(), beam=beam, progress=progress)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, source=str(files["train"]), valid_source=str(files["valid"]), test_source=str(files["test"]),
            src_field="src", tgt_field="tgt", shard_dir=None), distill=dataclasses.replace(cfg.distill, teacher=None))
        summary["teacher_data"] = {k: str(v) for k, v in files.items()}
    result = train(cfg, out, progress=progress)
    summary.update({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    return summary


def teacher_translations(ckpt: Path, where: Path, beam: int = 4, batch: int = 64, progress: bool = True) -> dict:
    """JSONL files of the teacher's data: train = each training source with the teacher's beam output as its
    target; valid / test = the original pairs. Streams: memory stays that of one batch."""
    from tqdm import tqdm

    from bigbatch import load
    from bigbatch.data.pipeline import prepare_spec
    from bigbatch.data.prepare import split_records
    from bigbatch.nn.generate import decoder_start, translate
    from bigbatch.train.checkpoint import checkpoint_assets

    model, cfg = load(ckpt)
    tokenizer, _ = checkpoint_assets(ckpt, cfg)
    spec = prepare_spec(cfg)
    where.mkdir(parents=True, exist_ok=True)
    files = {name: where / f"{name}.jsonl" for name in ("train", "valid", "test")}
    for name in ("valid", "test"):
        with open(files[name], "w", encoding="utf-8") as f:
            for r in split_records(spec, name):
                f.write(json.dumps({"src": r["src"], "tgt": r["tgt"]}, ensure_ascii=False) + "\n")
    limit = max(cfg.model.max_len - 2, 1)

    def flush(f, sources):
        ids = [tokenizer.encode(s, special=True)[:limit].tolist() for s in sources]
        width = max(len(x) for x in ids)
        pad = cfg.model.pad_id if cfg.model.pad_id is not None else 0
        src = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
        mask = torch.tensor([[True] * len(x) + [False] * (width - len(x)) for x in ids])
        with torch.inference_mode():
            hyps = translate(model, src, decoder_start(model, tokenizer), tokenizer.eos_id, max_new_tokens=limit, beam=beam,
                             src_mask=mask)
        for s, h in zip(sources, hyps):
            f.write(json.dumps({"src": s, "tgt": tokenizer.decode(h)}, ensure_ascii=False) + "\n")

    with open(files["train"], "w", encoding="utf-8") as f:
        pending = []
        for r in tqdm(split_records(spec, "train"), desc="teacher beam outputs", unit=" sentences",
                      disable=not progress, mininterval=5.0):
            pending.append(r["src"])
            if len(pending) == batch:
                flush(f, pending)
                pending = []
        if pending:
            flush(f, pending)
    print(f"teacher translations of the training sources: {files['train']}", file=sys.stderr)
    return files
