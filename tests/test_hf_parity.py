"""Our CausalLM equals Hugging Face's GPT-2 given the same weights (logits and gradients)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bigbatch.interop.hf import from_transformers  # noqa: E402


def hf_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_logits_equal_hugging_face_gpt2():
    hf = hf_gpt2()
    ours = from_transformers(hf)
    ids = torch.randint(0, 97, (3, 20))
    torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-5, rtol=1e-4)


def test_gradients_equal_hugging_face_gpt2():
    hf = hf_gpt2(1)
    ours = from_transformers(hf).train()
    ids = torch.randint(0, 97, (2, 16))
    hf(ids, labels=ids).loss.backward()
    logits = ours(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1)).backward()
    torch.testing.assert_close(ours.embed.tok.weight.grad, hf.transformer.wte.weight.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ours.decoder.blocks[0].attn.in_proj.weight.grad,
                               hf.transformer.h[0].attn.c_attn.weight.grad.t(), atol=1e-6, rtol=1e-4)
