"""Task metrics on a split: LM loss / perplexity / bits per byte; classification accuracy and macro-F1;
translation loss, and BLEU / chrF (sacrebleu) of greedy or beam decoding."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from bigbatch.tasks import get_task


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _lockstep(batches, dist, device):
    """Batches for a sharded model, whose every forward is a collective: all ranks run as many
    forwards as the rank with the most batches; a rank that has run out repeats its last batch,
    marked (second item False) so its result is dropped."""
    last = None
    for batch in batches:
        dist.sum([1.0], device)
        last = batch
        yield batch, True
    while dist.sum([0.0], device)[0] > 0:
        if last is None:
            raise RuntimeError(f"rank {dist.rank} has no evaluation batch at all; the split is too small for "
                               f"{dist.world_size} ranks")
        yield last, False


@torch.no_grad()
def evaluate(model, task: str, batches, device, autocast=contextlib.nullcontext, bytes_per_token: float | None = None,
             num_classes: int = 0, dist=None, lockstep: bool = False) -> dict:
    """Mean loss per target over ``batches`` plus the task's metrics. Restores train mode.

    With ``dist`` (several ranks) each rank passes its own share of the split and the sums are
    added over the ranks; ``lockstep`` for sharded (FSDP) models.
    """
    was_training = model.training
    model.eval()
    loss_sum, n_targets, n_examples = 0.0, 0, 0
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64) if get_task(task).labelled else None
    objective = get_task(task).objective
    stream = _lockstep(batches, dist, device) if lockstep else ((b, True) for b in batches)
    for batch, counts in stream:
        batch = _to(batch, device)
        with autocast():
            s, n, logs = objective(model, batch)
            if confusion is not None and counts:
                np.add.at(confusion, (batch["labels"].cpu().numpy(), logs["pred"].cpu().numpy()), 1)
        if counts:
            loss_sum += float(s)
            n_targets += int(n)
            n_examples += int(next(v for v in batch.values() if torch.is_tensor(v)).size(0))
    model.train(was_training)
    if dist is not None and dist.enabled:
        sums = dist.sum([loss_sum, n_targets, n_examples] + ([] if confusion is None else confusion.ravel().tolist()),
                        device)
        loss_sum, n_targets, n_examples = sums[0], int(sums[1]), int(sums[2])
        if confusion is not None:
            confusion = np.array(sums[3:], dtype=np.int64).reshape(confusion.shape)
    loss = loss_sum / max(n_targets, 1)
    out = {"loss": loss, "eval_targets": n_targets, ("rows" if task == "lm" else "examples"): n_examples}
    if task in ("lm", "translate"):
        out["perplexity"] = math.exp(min(loss, 50.0))
    if task == "lm" and bytes_per_token:
        out["bits_per_byte"] = loss / bytes_per_token / math.log(2)
    if confusion is not None:
        out.update(classification_metrics(confusion))
        out["confusion"] = confusion.tolist()  # rows: true class, columns: predicted
    return out


def classification_metrics(confusion: np.ndarray) -> dict:
    """accuracy and macro-F1 (mean over classes that occur in labels or predictions) of a confusion matrix."""
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(1), confusion.sum(0)
    present = (support + predicted) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return {"accuracy": float(tp.sum() / max(confusion.sum(), 1)), "macro_f1": float(f1[present].mean()) if present.any() else 0.0}


def unigram_bits_per_byte(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int,
                          bytes_per_token: float) -> float:
    """The token-frequency baseline: cross-entropy of ``eval_tokens`` under the train split's unigram
    distribution (add-one smoothed), in bits per byte of text."""
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    log2p = np.log2(counts / counts.sum())
    return float(-log2p[eval_tokens].mean() / bytes_per_token)


@torch.no_grad()
def translation_scores(model, batches, tokenizer, device, beam: int = 1, max_sentences: int | None = None,
                       length_penalty: float = 1.0, progress: bool = False) -> dict:
    """Decode the sources of ``batches`` (greedy, or beam search scoring log p / len^length_penalty),
    detokenize, and score against the references with sacrebleu (corpus BLEU and chrF).

    Every sentence of ``batches`` is scored unless ``max_sentences`` stops earlier; "sentences" says how many.
    """
    import sacrebleu
    from tqdm import tqdm

    from bigbatch.nn.generate import decoder_start, translate

    was_training = model.training
    model.eval()
    hyps, refs = [], []
    bar = tqdm(desc="decode", unit="sent", disable=not progress, mininterval=1.0)
    for batch in batches:
        out = translate(model, batch["src_ids"].to(device), decoder_start(model, tokenizer), tokenizer.eos_id,
                        max_new_tokens=model.config.max_len - 1, beam=beam, length_penalty=length_penalty,
                        src_mask=batch["src_mask"].to(device))
        hyps += [tokenizer.decode(o) for o in out]
        tgt, mask = batch["tgt_ids"], batch["tgt_mask"]
        refs += [tokenizer.decode(t[m][1:-1].tolist()) for t, m in zip(tgt, mask)]
        bar.update(len(out))
        if max_sentences is not None and len(hyps) >= max_sentences:
            break
    bar.close()
    model.train(was_training)
    if max_sentences is not None:
        hyps, refs = hyps[:max_sentences], refs[:max_sentences]
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "sentences": len(hyps), "examples": list(zip(hyps[:3], refs[:3]))}
