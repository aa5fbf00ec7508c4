"""Recurrent baselines trained by the same loop (model.arch: lstm | gru): a bidirectional RNN classifier and
an RNN encoder-decoder with attention (Luong et al. 2015, "general" score), with the same call signatures as
TextClassifier and Seq2Seq, so objectives, evaluation, beam search and the command line take them as they are.

    RNNClassifier(input_ids, attention_mask) -> logits (B, C)
    RNNSeq2Seq(src_ids, tgt_ids, src_mask) -> logits (B, T, V); encode / decode / new_cache as Seq2Seq
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bigbatch.config import ModelConfig


def _rnn(arch: str, input_size: int, hidden: int, layers: int, dropout: float, bidirectional: bool) -> nn.RNNBase:
    kind = {"lstm": nn.LSTM, "gru": nn.GRU}[arch]
    return kind(input_size, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                dropout=dropout if layers > 1 else 0.0)


def _run_packed(rnn: nn.RNNBase, x: Tensor, mask: Tensor | None) -> Tensor:
    """The RNN over right-padded ``x`` (B, T, D), each row only over its real positions (packed), padding
    positions of the output zero."""
    if mask is None:
        return rnn(x)[0]
    lengths = mask.sum(dim=1).clamp(min=1).cpu()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0]


def _check(cfg: ModelConfig) -> None:
    if cfg.d_model % 2:
        raise ValueError(f"model.d_model={cfg.d_model}: a bidirectional RNN needs an even width (d_model / 2 a direction)")


class RNNClassifier(nn.Module):
    """Embedding -> bidirectional LSTM/GRU (d_model / 2 a direction, n_layers) -> mean over real positions
    (pool=mean) or the final state of each direction (pool=last: the forward RNN at the last real token, the
    backward one at the first) -> linear head. input_ids (B, T), attention_mask (B, T) -> logits (B, C)."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        from bigbatch.nn.models import _resolve

        super().__init__()
        cfg = self.config = _resolve(config, overrides, ("vocab_size", "num_classes"))
        _check(cfg)
        if cfg.pool == "cls":
            raise ValueError("model.pool=cls: an RNN classifier pools by mean or by its final states (last)")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rnn = _rnn(cfg.arch, cfg.d_model, cfg.d_model // 2, cfg.n_layers, cfg.dropout, bidirectional=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None and self.config.pad_id is not None:
            attention_mask = input_ids != self.config.pad_id
        h = _run_packed(self.rnn, self.dropout(self.embed(input_ids)), attention_mask)
        if self.config.pool == "last":
            from bigbatch.nn.models import last_positions

            rows = torch.arange(h.size(0), device=h.device)
            half = h.size(-1) // 2
            forward_end = h[rows, last_positions(attention_mask, h.size(1), h.device), :half]
            pooled = torch.cat([forward_end, h[:, 0, half:]], dim=-1)
        elif attention_mask is None:
            pooled = h.mean(dim=1)
        else:
            m = attention_mask.to(h.dtype).unsqueeze(-1)
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


class RNNCache:
    """Decoder state between generation steps: the recurrent state, the encoder output and its mask."""

    def __init__(self, memory: Tensor, memory_mask: Tensor | None):
        self.memory, self.memory_mask, self.state, self.length = memory, memory_mask, None, 0

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index``: beam search moves hypotheses between beams."""
        self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
        if isinstance(self.state, tuple):
            self.state = tuple(s.index_select(1, index) for s in self.state)
        elif self.state is not None:
            self.state = self.state.index_select(1, index)


class RNNSeq2Seq(nn.Module):
    """Bidirectional LSTM/GRU encoder, unidirectional decoder of n_layers, Luong "general" attention over the
    encoder output after the decoder (score h_t W m_s; output tanh(W_c [context; h_t])), shared
    source/target embeddings tied to the output layer. Same interface as Seq2Seq."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        from bigbatch.nn.models import _resolve

        super().__init__()
        cfg = self.config = _resolve(config, overrides, ("vocab_size",))
        _check(cfg)
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.encoder = _rnn(cfg.arch, d, d // 2, cfg.n_encoder_layers or cfg.n_layers, cfg.dropout, bidirectional=True)
        self.decoder = _rnn(cfg.arch, d, d, cfg.n_decoder_layers or cfg.n_layers, cfg.dropout, bidirectional=False)
        self.attn = nn.Linear(d, d, bias=False)
        self.combine = nn.Linear(2 * d, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def source_mask(self, src_ids: Tensor, src_mask: Tensor | None) -> Tensor | None:
        if src_mask is None and self.config.pad_id is not None:
            src_mask = src_ids != self.config.pad_id
        return src_mask

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src_ids (B, S) -> memory (B, S, D)."""
        return _run_packed(self.encoder, self.dropout(self.embed(src_ids)), self.source_mask(src_ids, src_mask))

    def decode(self, tgt_ids: Tensor, memory: Tensor | None = None, src_mask: Tensor | None = None,
               cache: RNNCache | None = None) -> Tensor:
        """tgt_ids (B, T) -> logits (B, T, V); with ``cache`` the decoder continues from its state."""
        state = None
        if cache is not None:
            memory, src_mask, state = cache.memory, cache.memory_mask, cache.state
        out, state = self.decoder(self.dropout(self.embed(tgt_ids)), state)
        if cache is not None:
            cache.state, cache.length = state, cache.length + tgt_ids.size(1)
        scores = self.attn(out) @ memory.transpose(1, 2)  # (B, T, S)
        if src_mask is not None:
            scores = scores.masked_fill(~src_mask.bool()[:, None, :], float("-inf"))
        context = scores.softmax(dim=-1) @ memory
        h = torch.tanh(self.combine(torch.cat([context, out], dim=-1)))
        return self.lm_head(self.dropout(h))

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        src_mask = self.source_mask(src_ids, src_mask)
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask)

    def new_cache(self, memory: Tensor, src_mask: Tensor | None, max_len: int) -> RNNCache:
        return RNNCache(memory, src_mask)
