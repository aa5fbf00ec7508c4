"""Attention equals the formula softmax(QKᵀ/√d_k + mask)V, torch's kernel, and torch's MultiheadAttention."""

import math

import pytest
import torch
import torch.nn.functional as F

from bigbatch.nn.attention import (
    KVCache,
    MultiHeadAttention,
    attention_backend,
    causal_mask,
    reference_attention,
    scaled_dot_product_attention,
)


def formula64(q, k, v, mask=None, causal=False):
    """The attention formula written out in float64, independent of the code under test."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    L, S = scores.shape[-2:]
    if causal:
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return torch.softmax(scores, dim=-1) @ v


def make(B=2, H=3, L=5, S=5, E=8, Ev=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, E, generator=g, requires_grad=True)
    k = torch.randn(B, H, S, E, generator=g, requires_grad=True)
    v = torch.randn(B, H, S, Ev, generator=g, requires_grad=True)
    return q, k, v


def padding_mask(B, S, lengths):
    return (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]  # (B, 1, 1, S)


CASES = {
    "plain": dict(L=5, S=5, mask=None, causal=False),
    "causal": dict(L=6, S=6, mask=None, causal=True),
    "bool_mask": dict(L=4, S=7, mask="bool", causal=False),
    "additive_mask": dict(L=4, S=7, mask="additive", causal=False),
    "padding": dict(L=6, S=6, mask="padding", causal=False),
    "cross_L_ne_S": dict(L=3, S=9, mask="padding", causal=False),
    "value_dim_differs": dict(L=4, S=6, mask=None, causal=False, Ev=5),
}


def build_mask(kind, B, H, L, S):
    g = torch.Generator().manual_seed(1)
    if kind == "bool":
        m = torch.rand(B, H, L, S, generator=g) > 0.3
        m[..., 0] = True  # every query sees at least one key
        return m
    if kind == "additive":
        return torch.randn(B, 1, L, S, generator=g)
    if kind == "padding":
        return padding_mask(B, S, [S, S - 2])
    return None


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_matches_formula_and_torch(name, backend):
    c = CASES[name]
    q, k, v = make(L=c["L"], S=c["S"], Ev=c.get("Ev", 8))
    mask = build_mask(c["mask"], 2, 3, c["L"], c["S"])
    with attention_backend(backend):
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=c["causal"])
    expected = formula64(q, k, v, mask, c["causal"])
    torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=c["causal"])
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, torch_out, atol=1e-5, rtol=1e-5)

    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad_out)
    ref = torch.autograd.grad(expected, (q, k, v), grad_out.double())
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-5)


def test_float64_reference_is_exact():
    q, k, v = (t.detach().double() for t in make(L=4, S=6))
    mask = padding_mask(2, 6, [6, 3])
    out = reference_attention(q, k, v, mask)
    torch.testing.assert_close(out, formula64(q, k, v, mask), atol=1e-12, rtol=1e-12)


def test_mask_together_with_causal():
    """torch's kernel refuses mask + is_causal; ours combines them (reference path)."""
    q, k, v = make(L=5, S=5)
    pad = padding_mask(2, 5, [5, 3])
    out = scaled_dot_product_attention(q, k, v, attn_mask=pad, is_causal=True)
    combined = pad & torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=combined))


def test_fully_masked_row_gives_zeros_not_nan():
    q, k, v = make(B=1, H=1, L=2, S=3)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = reference_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[..., 1, :], torch.zeros_like(out[..., 1, :]))


def test_scale_argument():
    q, k, v = make()
    out = scaled_dot_product_attention(q, k, v, scale=0.3)
    expected = torch.softmax(q.double() @ k.double().transpose(-2, -1) * 0.3, -1) @ v.double()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_causal_mask_bottom_right():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def copy_to_torch(ours: MultiHeadAttention, d, h):
    ref = torch.nn.MultiheadAttention(d, h, batch_first=True)
    with torch.no_grad():
        fused = [ours.q_proj, ours.kv_proj] if ours.cross else [ours.in_proj]
        ref.in_proj_weight.copy_(torch.cat([p.weight for p in fused]))
        ref.in_proj_bias.copy_(torch.cat([p.bias for p in fused]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref


def test_self_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    d, h = 16, 4
    ours = MultiHeadAttention(d, h)
    ref = copy_to_torch(ours, d, h)
    x = torch.randn(2, 6, d, requires_grad=True)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out, w = ours(x, attn_mask=keep[:, None, None, :] & causal, need_weights=True)
    ref_out, ref_w = ref(x, x, x, key_padding_mask=~keep, attn_mask=~causal, need_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    # the fused path (no weights) gives the same output and the same gradients
    fused = ours(x, attn_mask=keep[:, None, None, :] & causal)
    torch.testing.assert_close(fused, ref_out, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(fused)
    ours_grads = torch.autograd.grad(fused, [x, ours.in_proj.weight], g)
    ref_grads = torch.autograd.grad(ref_out, [x, ref.in_proj_weight], g)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cross_attention_equals_torch_multihead_attention():
    torch.manual_seed(1)
    d, h = 12, 3
    ours = MultiHeadAttention(d, h, cross=True)
    ref = copy_to_torch(ours, d, h)
    x, memory = torch.randn(3, 4, d), torch.randn(3, 9, d)
    keep = torch.arange(9)[None, :] < torch.tensor([9, 5, 2])[:, None]
    out = ours(x, memory, attn_mask=keep[:, None, None, :])
    ref_out, _ = ref(x, memory, memory, key_padding_mask=~keep)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)


def test_kv_cache_equals_full_causal_attention():
    torch.manual_seed(2)
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(2, 7, 16)
    full = attn(x, is_causal=True)
    cache = KVCache(2, 2, 16, 8, torch.float32, "cpu")
    pieces = [attn(x[:, :3], is_causal=True, cache=cache)]  # a prompt of 3, then a chunk of 2, then 1s
    pieces.append(attn(x[:, 3:5], is_causal=True, cache=cache))
    pieces += [attn(x[:, t : t + 1], is_causal=True, cache=cache) for t in (5, 6)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-6, rtol=1e-5)


def _weights64(attn, h, mask=None, causal=False, memory=None):
    """softmax(QKᵀ/√d_k + mask) of one MultiHeadAttention, per head, in float64 from its own weights."""
    fused = [attn.q_proj, attn.kv_proj] if attn.cross else [attn.in_proj]
    W, b = (torch.cat([getattr(p, k) for p in fused]).double() for k in ("weight", "bias"))
    D, H = attn.d_model, attn.n_heads
    q = h.double() @ W[:D].T + b[:D]
    kv_in = (h if memory is None else memory).double()
    k = kv_in @ W[D : 2 * D].T + b[D : 2 * D]
    split = lambda t: t.view(t.size(0), t.size(1), H, D // H).transpose(1, 2)  # (B, H, L, hd)
    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(D // H)
    L, S = scores.shape[-2:]
    if causal:
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1)


def test_attention_maps_are_the_weights_the_model_used():
    """`bigbatch attention` draws what the forward pass computed: equal to the formula from the layer's weights."""
    from bigbatch.evaluate.attention_maps import attention_maps, select
    from bigbatch.data.tokenizer import ByteTokenizer
    from bigbatch.nn import CausalLM, Seq2Seq, TextClassifier

    torch.manual_seed(0)
    tok = ByteTokenizer()
    text = "def f(x):\n    return x"
    ids = torch.from_numpy(tok.encode(text).astype("int64"))[None]
    lm = CausalLM(vocab_size=tok.vocab_size, d_model=48, n_heads=3, n_layers=2, max_len=64).eval()
    maps = attention_maps(lm, "lm", tok, text, max_len=64)
    assert [(m.stack, m.layer) for m in maps] == [("decoder", 0), ("decoder", 1)]
    h0 = lm.decoder.blocks[0].norm_attn(lm.embed(ids))
    expected = _weights64(lm.decoder.blocks[0].attn, h0, causal=True)[0]
    assert torch.allclose(maps[0].weights.double(), expected, atol=1e-6)
    assert maps[0].weights.shape == (3, len(text), len(text)) and maps[0].keys[0] == "d"
    assert all(a.recorded is None and not a.record for a in (b.attn for b in lm.decoder.blocks))  # switched off

    clf = TextClassifier(vocab_size=tok.vocab_size, num_classes=3, d_model=32, n_heads=2, n_layers=1, max_len=64)
    m = select(attention_maps(clf.eval(), "classify", tok, "hello", max_len=64), None, 0)
    h = clf.encoder.blocks[0].norm_attn(clf.embed(torch.tensor([list(b"hello")])))
    assert m.stack == "encoder" and torch.allclose(m.weights.double(), _weights64(clf.encoder.blocks[0].attn, h)[0],
                                                   atol=1e-6)

    s2s = Seq2Seq(vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_layers=1, max_len=32, pad_id=0).eval()
    maps = attention_maps(s2s, "translate", tok, "abc", max_len=32, max_new_tokens=5)
    cross = select(maps, None, 0)
    assert cross.stack == "cross" and cross.keys == ["a", "b", "c"] and cross.queries[0] == "<bos>"
    assert cross.weights.shape == (2, len(cross.queries), 3)
    assert torch.allclose(cross.weights.sum(-1), torch.ones(2, len(cross.queries)))
    with pytest.raises(Exception, match="--layer 3: the cross attention has layers 0..0"):
        select(maps, "cross", 3)
