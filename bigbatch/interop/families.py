"""The three Hugging Face families bigbatch reads and writes, each as plain data: how its config.json maps to a
ModelConfig and back, and a table of tensors (ours <- theirs).

    bert    BertModel / BertForSequenceClassification (MiniLM included)  <-> TextClassifier (task classify)
    gpt2    GPT2Model / GPT2LMHeadModel                                  <-> CausalLM       (task lm)
    marian  MarianMTModel                                                 <-> Seq2Seq        (task translate)

Marian is the encoder-decoder family because it is the original Transformer as bigbatch builds it: post-norm
blocks, fixed sinusoids, embeddings scaled by √d_model and shared by encoder, decoder and output. T5 would need
relative position buckets, unscaled attention and a gated FFN, none of which the other tasks use.

A table row is ``(ours, [theirs, ...], op)``: one tensor of ours is the concatenation (dim 0) of theirs, after
``op``: "copy", "t" (GPT-2's Conv1D stores (in, out)) or "row" (Marian's final_logits_bias is (1, V)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bigbatch.config import ModelConfig
from bigbatch.errors import UserError

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu"}
"""Hugging Face activation names -> ours."""
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "swish"}

Row = tuple[str, list[str], str]


@dataclass(frozen=True)
class Family:
    name: str
    task: str
    to_model: Callable[[dict, dict], ModelConfig]
    """(config.json, the checkpoint's tensor shapes by name, without the body prefix) -> ModelConfig."""
    table: Callable[[ModelConfig], list[Row]]
    """Our tensor names <- theirs (without the model prefix) for a model of this config."""
    to_hf: Callable[[ModelConfig], dict]
    """ModelConfig -> the fields of config.json."""
    prefix: str
    """Where a with-head checkpoint keeps the body: "bert.", "transformer.", "model."."""
    ignored: tuple[str, ...] = ()
    """Tensor names (suffixes) a checkpoint may hold that carry nothing a bigbatch model needs."""


def activation(hf: dict, key: str, default: str) -> str:
    name = hf.get(key, default)
    if name not in ACTIVATIONS:
        raise UserError(f"config.json: {key}={name!r} is not supported; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def require(hf: dict, key: str, wanted, default, why: str) -> None:
    if hf.get(key, default) != wanted:
        raise UserError(f"config.json: {key}={hf.get(key)!r} is not supported ({why}); expected {wanted!r}")


def _linear(ours: str, theirs: str, op: str = "copy", bias: bool = True) -> list[Row]:
    rows = [(f"{ours}.weight", [f"{theirs}.weight"], op)]
    return rows + [(f"{ours}.bias", [f"{theirs}.bias"], "copy")] if bias else rows


def _norm(ours: str, theirs: str) -> list[Row]:
    return [(f"{ours}.weight", [f"{theirs}.weight"], "copy"), (f"{ours}.bias", [f"{theirs}.bias"], "copy")]


def _fused(ours: str, parts: list[str]) -> list[Row]:
    return [(f"{ours}.{kind}", [f"{p}.{kind}" for p in parts], "copy") for kind in ("weight", "bias")]


# ---------------------------------------------------------------------------------------------------- BERT

def bert_model(hf: dict, names: dict) -> ModelConfig:
    require(hf, "position_embedding_type", "absolute", "absolute", "relative position embeddings")
    require(hf, "is_decoder", False, False, "a BERT decoder")
    classes = names["^classifier.weight"][0] if "^classifier.weight" in names else 0
    if classes:
        if hf.get("problem_type") not in (None, "single_label_classification"):
            raise UserError(f"config.json: problem_type={hf['problem_type']!r}: bigbatch classifiers pick one label "
                            "(single_label_classification)")
        if classes < 2:
            raise UserError(f"config.json: a classifier of {classes} output (regression); bigbatch classifiers "
                            "pick one of 2 or more labels")
        id2label = hf.get("id2label") or {}
        if id2label and sorted(int(k) for k in id2label) != list(range(classes)):
            raise UserError(f"config.json: id2label has ids {sorted(int(k) for k in id2label)}, the classifier "
                            f"{classes} outputs")
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"],
        n_layers=hf["num_hidden_layers"], d_ff=hf["intermediate_size"], max_len=hf["max_position_embeddings"],
        pos="learned", norm="layernorm", norm_first=False, norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=activation(hf, "hidden_act", "gelu"), embed_norm=True, type_vocab_size=hf.get("type_vocab_size", 2),
        dropout=hf.get("hidden_dropout_prob", 0.1), pool="cls", pooler="pooler.dense.weight" in names,
        num_classes=classes, pad_id=hf.get("pad_token_id", 0), tie_embeddings=False)


def bert_table(cfg: ModelConfig) -> list[Row]:
    rows = [("embed.tok.weight", ["embeddings.word_embeddings.weight"], "copy"),
            ("embed.pos.weight", ["embeddings.position_embeddings.weight"], "copy"),
            *_norm("embed.norm", "embeddings.LayerNorm")]
    if cfg.type_vocab_size:
        rows.append(("embed.types.weight", ["embeddings.token_type_embeddings.weight"], "copy"))
    for i in range(cfg.n_layers):
        o, t = f"encoder.blocks.{i}", f"encoder.layer.{i}"
        rows += _fused(f"{o}.attn.in_proj", [f"{t}.attention.self.{x}" for x in ("query", "key", "value")])
        rows += _linear(f"{o}.attn.out_proj", f"{t}.attention.output.dense")
        rows += _norm(f"{o}.norm_attn", f"{t}.attention.output.LayerNorm")
        rows += _linear(f"{o}.mlp.fc1", f"{t}.intermediate.dense") + _linear(f"{o}.mlp.fc2", f"{t}.output.dense")
        rows += _norm(f"{o}.norm_mlp", f"{t}.output.LayerNorm")
    if cfg.pooler:
        rows += _linear("pooler", "pooler.dense")
    if cfg.num_classes:
        rows += _linear("head", "^classifier")  # ^: outside the body prefix
    return rows


def bert_config(cfg: ModelConfig) -> dict:
    return {"model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "num_attention_heads": cfg.n_heads, "num_hidden_layers": cfg.n_layers, "intermediate_size": cfg.d_ff or 4 * cfg.d_model,
            "max_position_embeddings": cfg.max_len, "hidden_act": HF_ACTIVATIONS[cfg.activation],
            "layer_norm_eps": cfg.norm_eps if cfg.norm_eps is not None else 1e-5,
            "type_vocab_size": max(cfg.type_vocab_size, 1), "hidden_dropout_prob": cfg.dropout or 0.0,
            "attention_probs_dropout_prob": cfg.dropout or 0.0, "pad_token_id": cfg.pad_id or 0,
            "position_embedding_type": "absolute"}


# ---------------------------------------------------------------------------------------------------- GPT-2

def gpt2_model(hf: dict, names: dict) -> ModelConfig:
    require(hf, "scale_attn_weights", True, True, "unscaled attention")
    require(hf, "scale_attn_by_inverse_layer_idx", False, False, "attention scaled by layer index")
    require(hf, "add_cross_attention", False, False, "cross-attention")
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["n_embd"], n_heads=hf["n_head"], n_layers=hf["n_layer"],
        d_ff=hf.get("n_inner") or 4 * hf["n_embd"], max_len=hf["n_positions"], pos="learned", norm="layernorm",
        norm_first=True, activation=activation(hf, "activation_function", "gelu_new"),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), dropout=hf.get("resid_pdrop", 0.1),
        tie_embeddings=hf.get("tie_word_embeddings", True))


def gpt2_table(cfg: ModelConfig) -> list[Row]:
    rows = [("embed.tok.weight", ["wte.weight"], "copy"), ("embed.pos.weight", ["wpe.weight"], "copy"),
            *_norm("decoder.norm", "ln_f")]
    for i in range(cfg.n_layers):
        o, t = f"decoder.blocks.{i}", f"h.{i}"
        rows += _linear(f"{o}.attn.in_proj", f"{t}.attn.c_attn", "t") + _linear(f"{o}.attn.out_proj", f"{t}.attn.c_proj", "t")
        rows += _norm(f"{o}.norm_attn", f"{t}.ln_1") + _norm(f"{o}.norm_mlp", f"{t}.ln_2")
        rows += _linear(f"{o}.mlp.fc1", f"{t}.mlp.c_fc", "t") + _linear(f"{o}.mlp.fc2", f"{t}.mlp.c_proj", "t")
    if not cfg.tie_embeddings:
        rows.append(("lm_head.weight", ["^lm_head.weight"], "copy"))
    return rows


def gpt2_config(cfg: ModelConfig) -> dict:
    return {"model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_embd": cfg.d_model, "n_head": cfg.n_heads,
            "n_layer": cfg.n_layers, "n_inner": cfg.d_ff or 4 * cfg.d_model, "n_positions": cfg.max_len,
            "activation_function": HF_ACTIVATIONS[cfg.activation],
            "layer_norm_epsilon": cfg.norm_eps if cfg.norm_eps is not None else 1e-5,
            "resid_pdrop": cfg.dropout or 0.0, "embd_pdrop": cfg.dropout or 0.0, "attn_pdrop": cfg.dropout or 0.0,
            "tie_word_embeddings": cfg.tie_embeddings}


# ---------------------------------------------------------------------------------------------------- Marian

def marian_model(hf: dict, names: dict) -> ModelConfig:
    for ours, theirs in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf[ours] != hf[theirs]:
            raise UserError(f"config.json: {ours}={hf[ours]} and {theirs}={hf[theirs]} differ; bigbatch's "
                            "translator has one head count and one feed-forward width")
    require(hf, "scale_embedding", True, False, "bigbatch scales sinusoid-position embeddings by √d_model")
    require(hf, "share_encoder_decoder_embeddings", True, True, "separate source and target embeddings")
    if hf.get("decoder_vocab_size") not in (None, hf["vocab_size"]):
        raise UserError(f"config.json: decoder_vocab_size={hf['decoder_vocab_size']} differs from "
                        f"vocab_size={hf['vocab_size']}; bigbatch shares one vocabulary")
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_heads=hf["encoder_attention_heads"],
        n_layers=hf["encoder_layers"], n_encoder_layers=hf["encoder_layers"], n_decoder_layers=hf["decoder_layers"],
        d_ff=hf["encoder_ffn_dim"], max_len=hf["max_position_embeddings"], pos="sinusoidal", sinusoid_layout="split",
        norm="layernorm", norm_first=False, activation=activation(hf, "activation_function", "gelu"),
        output_bias="^final_logits_bias" in names,
        dropout=hf.get("dropout", 0.1), tie_embeddings=True, pad_id=hf["pad_token_id"],
        decoder_start_id=hf.get("decoder_start_token_id", hf["pad_token_id"]))


def _marian_attention(o: str, t: str) -> list[Row]:
    return (_fused(f"{o}.in_proj", [f"{t}.{x}_proj" for x in "qkv"]) + _linear(f"{o}.out_proj", f"{t}.out_proj"))


def marian_table(cfg: ModelConfig) -> list[Row]:
    rows = [("embed.tok.weight", ["shared.weight"], "copy")]
    if cfg.output_bias:
        rows.append(("lm_head.bias", ["^final_logits_bias"], "row"))
    for i in range(cfg.n_encoder_layers or cfg.n_layers):
        o, t = f"encoder.blocks.{i}", f"encoder.layers.{i}"
        rows += _marian_attention(f"{o}.attn", f"{t}.self_attn") + _norm(f"{o}.norm_attn", f"{t}.self_attn_layer_norm")
        rows += _linear(f"{o}.mlp.fc1", f"{t}.fc1") + _linear(f"{o}.mlp.fc2", f"{t}.fc2")
        rows += _norm(f"{o}.norm_mlp", f"{t}.final_layer_norm")
    for i in range(cfg.n_decoder_layers or cfg.n_layers):
        o, t = f"decoder.blocks.{i}", f"decoder.layers.{i}"
        rows += _marian_attention(f"{o}.attn", f"{t}.self_attn") + _norm(f"{o}.norm_attn", f"{t}.self_attn_layer_norm")
        rows += _linear(f"{o}.cross_attn.q_proj", f"{t}.encoder_attn.q_proj")
        rows += _fused(f"{o}.cross_attn.kv_proj", [f"{t}.encoder_attn.k_proj", f"{t}.encoder_attn.v_proj"])
        rows += _linear(f"{o}.cross_attn.out_proj", f"{t}.encoder_attn.out_proj")
        rows += _norm(f"{o}.norm_cross", f"{t}.encoder_attn_layer_norm")
        rows += _linear(f"{o}.mlp.fc1", f"{t}.fc1") + _linear(f"{o}.mlp.fc2", f"{t}.fc2")
        rows += _norm(f"{o}.norm_mlp", f"{t}.final_layer_norm")
    return rows


def marian_config(cfg: ModelConfig) -> dict:
    return {"model_type": "marian", "vocab_size": cfg.vocab_size, "decoder_vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model, "encoder_layers": cfg.n_encoder_layers or cfg.n_layers,
            "decoder_layers": cfg.n_decoder_layers or cfg.n_layers,
            "encoder_attention_heads": cfg.n_heads, "decoder_attention_heads": cfg.n_heads,
            "encoder_ffn_dim": cfg.d_ff or 4 * cfg.d_model, "decoder_ffn_dim": cfg.d_ff or 4 * cfg.d_model, "max_position_embeddings": cfg.max_len,
            "activation_function": HF_ACTIVATIONS[cfg.activation], "scale_embedding": True,
            "share_encoder_decoder_embeddings": True, "tie_word_embeddings": True, "dropout": cfg.dropout or 0.0,
            "attention_dropout": 0.0, "activation_dropout": 0.0, "pad_token_id": cfg.pad_id,
            "decoder_start_token_id": cfg.decoder_start_id, "is_encoder_decoder": True}


FAMILIES = {
    "bert": Family("bert", "classify", bert_model, bert_table, bert_config, "bert.",
                   ("embeddings.position_ids", "cls.", "pooler.dense.")),
    "gpt2": Family("gpt2", "lm", gpt2_model, gpt2_table, gpt2_config, "transformer.",
                   (".attn.bias", ".attn.masked_bias", "lm_head.weight")),
    "marian": Family("marian", "translate", marian_model, marian_table, marian_config, "model.",
                     ("embed_positions.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                      "lm_head.weight")),
}
ARCHITECTURES = {
    "BertModel": "bert", "BertForSequenceClassification": "bert", "BertForMaskedLM": "bert",
    "BertForPreTraining": "bert", "GPT2Model": "gpt2", "GPT2LMHeadModel": "gpt2", "MarianMTModel": "marian",
    "MarianModel": "marian",
}
"""config.json ``architectures`` bigbatch imports, and their family (BertForMaskedLM / BertForPreTraining: the
encoder alone; their pre-training heads are left out)."""
