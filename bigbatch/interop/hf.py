"""Hugging Face checkpoint directories in and out: ``import_hf`` writes a bigbatch run directory, ``export_hf``
a directory ``transformers.AutoModel*.from_pretrained`` and ``AutoTokenizer.from_pretrained`` read.

Neither needs ``transformers``: config.json is JSON, the weights are safetensors (or a pytorch_model.bin read
with ``torch.load(weights_only=True)``, which refuses pickled code), and the tokenizer is a tokenizer.json of
the ``tokenizers`` library (built from vocab.json + merges.txt or vocab.txt where a checkpoint has only those).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from bigbatch.config import Config, DataConfig
from bigbatch.errors import UserError
from bigbatch.interop.families import ARCHITECTURES, FAMILIES, HF_ACTIVATIONS, Family
from bigbatch.interop.hf_tokenizer import export_tokenizer, import_tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_hf_config(hf_dir: Path) -> tuple[dict, Family, str]:
    """config.json -> (its fields, the family, the architecture name)."""
    path = hf_dir / "config.json"
    if not hf_dir.is_dir():
        raise UserError(f"{hf_dir}: not a directory (expected a Hugging Face checkpoint directory)")
    if not path.exists():
        raise UserError(f"{hf_dir}: no config.json; expected a Hugging Face checkpoint directory (config.json, "
                        "model.safetensors or pytorch_model.bin, tokenizer files)")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({e})") from None
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None and not archs and hf.get("model_type") in FAMILIES:  # no architectures named: the base model
        arch = {"bert": "BertModel", "gpt2": "GPT2LMHeadModel", "marian": "MarianMTModel"}[hf["model_type"]]
    if arch is None:
        raise UserError(f"{path}: architecture {archs or hf.get('model_type')!r} is not supported; bigbatch imports "
                        f"{', '.join(ARCHITECTURES)}")
    return hf, FAMILIES[ARCHITECTURES[arch]], arch


def read_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name (one file; sharded checkpoints via their index)."""
    from safetensors.torch import load_file

    index = next((hf_dir / f"{w}.index.json" for w in WEIGHT_FILES if (hf_dir / f"{w}.index.json").exists()), None)
    if index is not None:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [next((w for w in WEIGHT_FILES if (hf_dir / w).exists()), None)]
        if files[0] is None:
            raise UserError(f"{hf_dir}: no model.safetensors or pytorch_model.bin")
    tensors = {}
    for name in files:
        path = hf_dir / name
        try:
            if name.endswith(".safetensors"):
                tensors.update(load_file(str(path)))
            else:
                tensors.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # a truncated file, or a .bin that holds more than tensors
            raise UserError(f"{path}: cannot read the weights ({' '.join(str(e).split())[:200]})") from None
    # checkpoints of old TensorFlow-converted BERTs name LayerNorm parameters gamma / beta
    return {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in tensors.items()}


def _body_names(tensors: dict, family: Family) -> dict[str, str]:
    """The table's names -> the checkpoint's: body tensors without the prefix ("bert.", "transformer.", "model."),
    which a checkpoint of the bare body (BertModel, GPT2Model) does not have; "^name" for a top-level tensor."""
    out = {}
    for k in tensors:
        out["^" + k] = k
        out[k[len(family.prefix):] if k.startswith(family.prefix) else k] = k
    return out


def _convert(rows, tensors: dict, names: dict, shapes: dict, source: Path) -> dict[str, torch.Tensor]:
    ours, used = {}, set()
    for name, parts, op in rows:
        missing = [p for p in parts if p not in names]
        if missing:
            raise UserError(f"{source}: no tensor {missing[0].lstrip('^')} (needed for {name}); the checkpoint does "
                            "not match its config.json")
        got = []
        for p in parts:
            t = tensors[names[p]].float()
            used.add(names[p])
            got.append(t.t() if op == "t" else t.reshape(-1) if op == "row" else t)
        value = torch.cat(got, 0) if len(got) > 1 else got[0]
        if tuple(value.shape) != tuple(shapes[name]):
            shown = " + ".join(f"{names[p]} {tuple(tensors[names[p]].shape)}" for p in parts)
            raise UserError(f"{source}: {shown} gives {name} the shape {tuple(value.shape)}; config.json implies "
                            f"{tuple(shapes[name])}")
        ours[name] = value.contiguous()
    return ours, used


def convert(hf: dict, family: Family, tensors: dict, source: Path | str, st_mean: bool = False):
    """(config.json fields, family, tensors by name) -> (ModelConfig, our model with those weights)."""
    from bigbatch.nn.models import build_model

    names = _body_names(tensors, family)
    try:
        model_cfg = family.to_model(hf, {n: tuple(tensors[k].shape) for n, k in names.items()})
    except KeyError as e:
        raise UserError(f"{source}: config.json has no {e.args[0]!r}, which a {family.name} config needs") from None
    if family.name == "bert" and not model_cfg.num_classes and st_mean:
        model_cfg = dataclasses.replace(model_cfg, pool="mean", pooler=False)
    model = build_model(family.task, model_cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    ours, used = _convert(family.table(model_cfg), tensors, names, shapes, source)
    _check_leftovers(tensors, used, family, ours, source)
    if model_cfg.tie_embeddings:
        ours["lm_head.weight"] = ours["embed.tok.weight"]
    model.load_state_dict(ours, strict=True)
    return model_cfg, model.eval()


def from_transformers(hf_model):
    """Our model (eval mode) with the weights of an in-memory transformers model of a supported family."""
    hf = hf_model.config.to_dict()
    arch = type(hf_model).__name__
    if arch not in ARCHITECTURES:
        raise UserError(f"{arch} is not supported; bigbatch imports {', '.join(ARCHITECTURES)}")
    return convert(hf, FAMILIES[ARCHITECTURES[arch]], hf_model.state_dict(), arch)[1]


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """A Hugging Face checkpoint directory -> a bigbatch run directory (the same outputs; every command reads it)."""
    from bigbatch.train.checkpoint import write_weights_run

    hf_dir = package_dir(str(hf_dir)) if str(hf_dir).startswith("package:") else Path(hf_dir).expanduser()
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: already exists and is not empty; give a new directory (nothing is overwritten)")
    hf, family, arch = read_hf_config(hf_dir)
    tensors = read_weights(hf_dir)
    source = hf_dir / next((w for w in WEIGHT_FILES if (hf_dir / w).exists()), WEIGHT_FILES[0])
    tokenizer_json, tok = import_tokenizer(hf_dir, family.name)
    model_cfg, model = convert(hf, family, tensors, source, st_mean=_sentence_transformers_mean(hf_dir))
    if tok.vocab_size > model_cfg.vocab_size:
        raise UserError(f"{hf_dir}: the tokenizer has {tok.vocab_size} ids, the model's vocab_size is "
                        f"{model_cfg.vocab_size}; they do not belong together")
    labels = None
    if model_cfg.num_classes:
        id2label = hf.get("id2label") or {}
        labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(model_cfg.num_classes)]
    cfg = Config(task=family.task, model=model_cfg,
                 data=DataConfig(tokenizer=str((out_dir / "tokenizer.json").resolve()), **_data_keys(family, model_cfg)))
    assets = {"tokenizer.json": tokenizer_json}
    if labels is not None:
        assets["labels.json"] = (json.dumps(labels) + "\n").encode()
    summary = {"imported_from": str(hf_dir.resolve()), "architecture": arch, "family": family.name}
    return write_weights_run(out_dir, model, cfg, assets, summary)


def _sentence_transformers_mean(hf_dir: Path) -> bool:
    """A sentence-transformers model that mean-pools (its 1_Pooling/config.json): imported with pool=mean."""
    path = hf_dir / "1_Pooling" / "config.json"
    try:
        return path.exists() and bool(json.loads(path.read_text()).get("pooling_mode_mean_tokens"))
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


def _data_keys(family: Family, cfg) -> dict:
    if family.task == "lm":
        return {"seq_len": min(cfg.max_len, 1024)}
    return {}


def _check_leftovers(tensors: dict, used: set, family: Family, ours: dict, source: Path) -> None:
    """Every tensor of the checkpoint is used or known to carry nothing bigbatch needs (a tied copy of the
    embedding must equal it)."""
    for name, value in tensors.items():
        if name in used:
            continue
        if not any(p in name for p in family.ignored):
            raise UserError(f"{source}: tensor {name} {tuple(value.shape)} has no place in a bigbatch "
                            f"{family.task} model; this variant of {family.name} is not supported")
        if name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight"):
            tok = ours["embed.tok.weight"]
            if value.shape != tok.shape or not torch.equal(value.float(), tok):
                raise UserError(f"{source}: {name} {tuple(value.shape)} differs from the token embedding "
                                f"{tuple(tok.shape)}; bigbatch ties them in a {family.name} model")


def package_dir(spec: str) -> Path:
    """``package:NAME/SUB/DIR`` -> the directory SUB/DIR inside the installed Python package NAME."""
    import importlib.util

    name, _, sub = spec[len("package:"):].partition("/")
    try:
        found = importlib.util.find_spec(name) if all(p.isidentifier() for p in name.split(".")) else None
    except ImportError:  # a dotted name whose parent is not installed
        found = None
    if found is None:
        raise UserError(f"{spec}: no installed Python package {name!r} (pip install {name.replace('_', '-')}?)")
    if not found.submodule_search_locations:
        raise UserError(f"{spec}: {name} is a module ({found.origin}), not a package directory")
    return Path(list(found.submodule_search_locations)[0]) / sub


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").exists() and not (path / "config.yaml").exists()


def pretrained_run(spec: str, run_dir: Path) -> Path | None:
    """train.init_from given as a Hugging Face directory (or package:NAME/DIR): imported once into
    RUN_DIR/pretrained, whose path is returned; None for a bigbatch run or checkpoint."""
    path = package_dir(spec) if spec.startswith("package:") else Path(spec).expanduser()
    if not is_hf_dir(path):
        if spec.startswith("package:"):
            raise UserError(f"train.init_from={spec}: {path} holds no Hugging Face config.json")
        return None
    out = Path(run_dir) / "pretrained"
    if (out / "config.yaml").exists():  # imported by an earlier start of this run: the same checkpoint?
        try:
            before = json.loads((out / "summary.json").read_text()).get("imported_from")
        except (OSError, ValueError):
            before = None
        if before != str(path.resolve()):
            raise UserError(f"train.init_from={spec}: {out} holds an import of {before}; give a new run directory")
        return out
    import_hf(path, out)
    return out


# ---------------------------------------------------------------------------------------------------- export

def export_refusal(task: str, m) -> str | None:
    """Why a model of this config has no Hugging Face counterpart bigbatch writes, or None."""
    if m.quantized:
        return f"it is int8 (model.quantized={m.quantized}); export the float run it was quantized from"
    if m.layer_heads is not None or m.layer_d_ff is not None:
        return "it is pruned to uneven layers (model.layer_heads / layer_d_ff); Hugging Face configs hold one size"
    if m.norm != "layernorm":
        return f"model.norm={m.norm}: the supported families use LayerNorm"
    if m.pos == "rope":
        return "model.pos=rope: GPT-2, BERT and Marian have absolute positions"
    if not m.bias:
        return "model.bias=false: GPT-2, BERT and Marian have biases"
    if task != "classify" and (m.embed_norm or m.type_vocab_size):
        return "model.embed_norm / type_vocab_size: only BERT has an embedding norm and token types"
    if m.activation not in HF_ACTIVATIONS:
        return f"model.activation={m.activation} has no Hugging Face name"
    wanted = {"lm": (True, "learned", "GPT-2 (pre-norm, learned positions)"),
              "classify": (False, "learned", "BERT (post-norm, learned positions)"),
              "translate": (False, "sinusoidal", "Marian (post-norm, sinusoidal positions)")}
    if task not in wanted or m.arch != "transformer":
        return f"task={task} (model.arch={m.arch}): bigbatch exports lm (GPT-2), classify (BERT), translate (Marian)"
    norm_first, pos, name = wanted[task]
    if m.norm_first != norm_first or m.pos != pos:
        return (f"model.norm_first={str(m.norm_first).lower()}, model.pos={m.pos}: its counterpart {name} has "
                f"norm_first={str(norm_first).lower()}, pos={pos}")
    if task == "lm" and m.output_bias:
        return "model.output_bias=true: GPT-2's output has no bias"
    if task == "classify" and not m.embed_norm:
        return "model.embed_norm=false: BERT normalises its embeddings"
    if task == "translate" and (m.sinusoid_layout != "split" or not m.tie_embeddings):
        return "Marian's sinusoids are split (model.sinusoid_layout=split) and its embeddings tied"
    return None


def export_hf(run: str | Path, out_dir: str | Path, encoder_only: bool = False) -> Path:
    """A bigbatch run or checkpoint -> a Hugging Face checkpoint directory. ``encoder_only``: a classifier
    whose pooling BERT cannot express (pool=mean) is written as a BertModel, without its head."""
    from safetensors.torch import save_file

    from bigbatch import load
    from bigbatch.train.checkpoint import checkpoint_assets, resolve_checkpoint

    ckpt = resolve_checkpoint(run)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: already exists and is not empty; give a new directory (nothing is overwritten)")
    model, cfg = load(ckpt)
    m = cfg.model
    if encoder_only and cfg.task != "classify":
        raise UserError(f"--encoder-only: {ckpt} is a task={cfg.task} run; it applies to classifiers")
    why = export_refusal(cfg.task, m)
    if why is None and cfg.task == "classify" and not encoder_only and m.num_classes and not (m.pool == "cls" and m.pooler):
        why = (f"model.pool={m.pool}{', no pooler' if m.pool == 'cls' else ''}: BertForSequenceClassification reads "
               "tanh(pooler(h[CLS])); give --encoder-only to write the encoder alone (BertModel)")
    if why is not None:
        raise UserError(f"{ckpt}: cannot export to Hugging Face: {why}")
    family = next(f for f in FAMILIES.values() if f.task == cfg.task)
    if encoder_only:
        m = dataclasses.replace(m, num_classes=0)
    tokenizer, labels = checkpoint_assets(ckpt, cfg, head=bool(m.num_classes))
    if getattr(tokenizer, "tok", None) is None and tokenizer.kind != "byte":
        raise UserError(f"{ckpt}: data.tokenizer={cfg.data.tokenizer} has no tokenizer.json a Hugging Face "
                        "tokenizer can be made of")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    rows = family.table(m)
    covered = {name for name, _, _ in rows} | ({"lm_head.weight"} if m.tie_embeddings else set())
    if encoder_only:
        covered |= {k for k in state if k.split(".")[0] in ("head", "pooler")}
    left = sorted(set(state) - covered)
    if left:  # a tensor the Hugging Face model has no place for: it would compute something else
        raise UserError(f"{ckpt}: cannot export to Hugging Face: {left[0]} {tuple(state[left[0]].shape)} has no place "
                        f"in a {family.name} model")
    theirs = {}
    for name, parts, op in rows:
        value = state[name]
        if op == "t":
            value = value.t()
        chunks = value.chunk(len(parts), 0) if len(parts) > 1 else [value]
        for p, chunk in zip(parts, chunks):
            key = p[1:] if p.startswith("^") else family.prefix + p
            theirs[key] = (chunk.reshape(1, -1) if op == "row" else chunk).contiguous().clone()
    if cfg.task == "translate" and not m.output_bias:  # what bigbatch leaves out, Hugging Face's models add
        theirs["final_logits_bias"] = torch.zeros(1, m.vocab_size)
    if cfg.task == "classify" and not m.type_vocab_size:
        theirs["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(1, m.d_model)
    hf = family.to_hf(m)
    hf["architectures"] = [_architecture(cfg.task, m)]
    hf.update(tokenizer_ids(tokenizer))
    if cfg.task == "translate":
        hf["decoder_start_token_id"] = m.decoder_start_id if m.decoder_start_id is not None else tokenizer.bos_id
        hf["pad_token_id"] = m.pad_id if m.pad_id is not None else tokenizer.pad_id
        hf["forced_eos_token_id"] = tokenizer.eos_id
    if labels is not None and m.num_classes:
        hf["id2label"] = dict(enumerate(labels))
        hf["label2id"] = {name: i for i, name in enumerate(labels)}
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(theirs, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        export_tokenizer(tokenizer, tmp, m.max_len)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _architecture(task: str, m) -> str:
    if task == "lm":
        return "GPT2LMHeadModel"
    if task == "translate":
        return "MarianMTModel"
    return "BertForSequenceClassification" if m.num_classes else "BertModel"


def tokenizer_ids(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
