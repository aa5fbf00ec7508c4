"""Wrappers applied from outside the model change nothing but cost: feature on equals feature off."""

import copy

import torch

from bigbatch.distributed.parallelize import apply_ac
from bigbatch.nn import CausalLM, Seq2Seq
from bigbatch.train.checkpoint import unwrap


def grads(model, loss_fn):
    model.zero_grad()
    loss_fn(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_equals_plain():
    torch.manual_seed(0)
    plain = CausalLM(vocab_size=40, d_model=32, n_heads=4, n_layers=3, max_len=16).double()
    ac = apply_ac(copy.deepcopy(plain))
    assert [n for n, _ in ac.named_parameters()] == [n for n, _ in plain.named_parameters()]
    ids = torch.randint(0, 40, (2, 16))
    loss = lambda m: torch.nn.functional.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())  # noqa
    a, b = grads(plain, loss), grads(ac, loss)
    assert all(torch.allclose(a[n], b[n], atol=1e-12) for n in a)


def test_activation_checkpointing_seq2seq():
    torch.manual_seed(1)
    plain = Seq2Seq(vocab_size=20, d_model=16, n_heads=2, n_layers=2, max_len=16).double()
    ac = apply_ac(copy.deepcopy(plain))
    src, tgt = torch.randint(0, 20, (2, 7)), torch.randint(0, 20, (2, 5))
    loss = lambda m: m(src, tgt).square().mean()  # noqa: E731
    a, b = grads(plain, loss), grads(ac, loss)
    assert all(torch.allclose(a[n], b[n], atol=1e-12) for n in a)


def test_unwrap_compiled_keeps_names():
    model = CausalLM(vocab_size=10, d_model=8, n_heads=2, n_layers=1, max_len=8)
    assert unwrap(torch.compile(model)) is model
