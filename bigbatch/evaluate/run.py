"""Evaluate a trained run on a split (what `bigbatch eval` prints), with the strong simple baseline beside it.

    result = evaluate_run("runs/x", "test")            # every example of the split, the best checkpoint
    result["accuracy"], result["baseline"]["accuracy"]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bigbatch.errors import UserError
from bigbatch.train.setup import subnormals_flushed


def baseline_cached(cfg, split: str, shard_dir: Path | None = None, progress: bool = False) -> dict:
    """The baseline of ``cfg``'s data on ``split``, cached in BIGBATCH_CACHE/baselines under the prepared
    shards' fingerprint (the same data and split), so a second evaluation does not fit it again."""
    from bigbatch.data.prepare import cache_root
    from bigbatch.data.shards import read_manifest, write_atomic
    from bigbatch.evaluate.baseline import BASELINE_VERSION, baseline

    path = None
    if shard_dir is not None:
        fingerprint = read_manifest(shard_dir)["fingerprint"][:16]
        path = cache_root() / "baselines" / f"{fingerprint}-{cfg.task}-{split}-v{BASELINE_VERSION}.json"
    if path is not None and path.exists():
        return json.loads(path.read_text())
    result = baseline(cfg, split=split, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(result).encode())
    return result


@subnormals_flushed()
def evaluate_run(path: str | Path, split: str = "valid", checkpoint: str = "best", beam: int = 4,
                 length_penalty: float = 1.0, max_examples: int | None = None, seed: int = 0, decode: bool = True,
                 baseline: bool = True, device: str | None = None, progress: bool = False,
                 plots: bool = True) -> dict:
    """Task metrics of a run's checkpoint on ``split``: every example unless ``max_examples`` (a seeded random
    sample of about that many; language models always read the whole split). Translation decodes with beam
    search (``beam`` 1 = greedy). Runs on ``device`` (None = the run's train.device: auto = cuda when available)
    in the run's micro-batches. Returns the metrics, "examples" (how many were scored), "checkpoint", and
    the baseline's metrics under "baseline" (when it can be computed: scikit-learn for classification)."""
    from bigbatch import load
    from bigbatch.data.pipeline import build_data
    from bigbatch.evaluate.evaluate import evaluate, translation_scores
    from bigbatch.train.checkpoint import resolve_checkpoint
    from bigbatch.train.setup import plan_batch, resolve_device

    if max_examples is not None and max_examples < 1:
        raise UserError(f"--max-examples {max_examples}: expected a number of examples >= 1")
    if beam < 1:
        raise UserError(f"--beam {beam}: expected a beam size >= 1 (1 = greedy)")
    ckpt = resolve_checkpoint(path, checkpoint)
    model, cfg = load(ckpt)
    device = resolve_device(device or cfg.train.device)
    model.to(device)
    data = build_data(cfg, plan_batch(cfg).micro, progress=False)  # rows, examples or tokens, as in training
    loader = data.loader(split)
    if cfg.task == "lm" and max_examples is not None:
        print("note: --max-examples does not apply to a language model; scoring the whole split", file=sys.stderr)
    sample = {} if cfg.task == "lm" or max_examples is None else {"max_examples": max_examples, "seed": seed}
    result = evaluate(model, cfg.task, loader.eval_batches(**sample), device,
                      bytes_per_token=loader.shards.bytes_per_token, num_classes=cfg.model.num_classes)
    if cfg.task == "translate" and decode:
        scores = translation_scores(model, loader.eval_batches(**sample), data.tokenizer, device, beam=beam,
                                    length_penalty=length_penalty, progress=progress)
        result.update(bleu=scores["bleu"], chrf=scores["chrf"], decoding=f"beam {beam}" if beam > 1 else "greedy")
    result.update(split=split, checkpoint=ckpt.name)
    if "confusion" in result:  # classify / vision: the matrix as a picture, in the run's plots/
        from bigbatch.evaluate.confusion import plot_confusion

        result["labels"] = list(data.labels)  # row = true class, column = predicted, in this order

        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
        if not plots:
            pass
        elif len(data.labels) > 100:
            print(f"note: no confusion-matrix picture for {len(data.labels)} classes (the matrix is in --json)",
                  file=sys.stderr)
        else:
            try:
                out = plot_confusion(result["confusion"], data.labels, run_dir / "plots" / f"confusion-{split}.png",
                                     title=f"{split} ({ckpt.name})")
                result["confusion_png"] = str(out)
            except OSError as e:  # a read-only checkpoint directory: the numbers still stand
                print(f"note: cannot write the confusion-matrix picture into {run_dir / 'plots'} ({e.strerror})",
                      file=sys.stderr)
    if baseline:
        try:
            result["baseline"] = baseline_cached(cfg, split, data.shard_dir, progress)
        except UserError as e:  # e.g. scikit-learn missing: the model's numbers still stand, said in one line
            result["baseline"] = {"error": str(e)}
            print(f"note: no baseline: {e}", file=sys.stderr)
    return result

