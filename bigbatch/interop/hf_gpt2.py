"""Hugging Face GPT-2 <-> bigbatch CausalLM, parameter by parameter.

GPT-2's Conv1D layers store weights as (in, out); torch.nn.Linear stores (out, in), so every
projection is transposed. The layouts are otherwise the same: fused q/k/v (c_attn -> in_proj),
pre-norm blocks, a final LayerNorm, learned positions, tanh-GELU, the output tied to wte.
"""

from __future__ import annotations

import torch

from bigbatch.config import ModelConfig
from bigbatch.nn.models import CausalLM

# ours -> (theirs, transpose)
_BLOCK = {
    "attn.in_proj.weight": ("attn.c_attn.weight", True), "attn.in_proj.bias": ("attn.c_attn.bias", False),
    "attn.out_proj.weight": ("attn.c_proj.weight", True), "attn.out_proj.bias": ("attn.c_proj.bias", False),
    "norm_attn.weight": ("ln_1.weight", False), "norm_attn.bias": ("ln_1.bias", False),
    "mlp.fc1.weight": ("mlp.c_fc.weight", True), "mlp.fc1.bias": ("mlp.c_fc.bias", False),
    "mlp.fc2.weight": ("mlp.c_proj.weight", True), "mlp.fc2.bias": ("mlp.c_proj.bias", False),
    "norm_mlp.weight": ("ln_2.weight", False), "norm_mlp.bias": ("ln_2.bias", False),
}


def config_from_hf_gpt2(hf_config) -> ModelConfig:
    return ModelConfig(vocab_size=hf_config.vocab_size, d_model=hf_config.n_embd, n_heads=hf_config.n_head,
                       n_layers=hf_config.n_layer, d_ff=hf_config.n_inner or 4 * hf_config.n_embd,
                       max_len=hf_config.n_positions, pos="learned", norm="layernorm", norm_first=True,
                       activation="gelu_tanh", dropout=0.0, tie_embeddings=True)


@torch.no_grad()
def from_hf_gpt2(hf_model) -> CausalLM:
    """A CausalLM with the weights of a transformers GPT2LMHeadModel (same logits)."""
    model = CausalLM(config_from_hf_gpt2(hf_model.config))
    theirs = hf_model.state_dict()
    ours = {"embed.tok.weight": theirs["transformer.wte.weight"], "embed.pos.weight": theirs["transformer.wpe.weight"],
            "decoder.norm.weight": theirs["transformer.ln_f.weight"], "decoder.norm.bias": theirs["transformer.ln_f.bias"]}
    for i in range(hf_model.config.n_layer):
        for name, (hf_name, transpose) in _BLOCK.items():
            w = theirs[f"transformer.h.{i}.{hf_name}"]
            ours[f"decoder.blocks.{i}.{name}"] = w.t() if transpose else w
    ours["lm_head.weight"] = ours["embed.tok.weight"]
    model.load_state_dict({k: v.contiguous() for k, v in ours.items()}, strict=True)
    return model
