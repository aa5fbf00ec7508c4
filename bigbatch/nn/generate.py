"""Decoding with the key-value cache: greedy, temperature / top-k / top-p sampling, beam search.

``generate`` continues a CausalLM prompt; ``translate`` decodes a Seq2Seq source. Both run
the prompt (or the encoder) once, then feed one token per step through the cache.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bigbatch.errors import UserError
from bigbatch.nn.transformer import DecodeCache


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 = greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked before it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    if not bool(torch.isfinite(probs).all()):  # else torch.multinomial fails with a traceback
        raise UserError("cannot sample: the model's outputs are not finite (NaN or inf weights, e.g. after a "
                        "diverged run)")
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             return_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Continue prompts of a CausalLM. input_ids (B, T) -> (B, T + n) with n <= max_new_tokens.

    With ``use_cache`` the prompt runs once and each new token costs one position; without,
    every step reruns the whole (window of the) sequence. Past ``config.max_len`` tokens the
    context slides (uncached). ``return_logits`` also returns the step logits (B, n, V).
    Sequences that produced ``eos_id`` are padded with it until all have finished.
    """
    max_len = model.config.max_len
    ids, all_logits = input_ids, []
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    cache = model.new_cache(ids.size(0), max_len) if use_cache and ids.size(1) < max_len else None
    logits = model(ids[:, -max_len:], cache=cache)[:, -1]
    for step in range(max_new_tokens):
        all_logits.append(logits)
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_id), token)
            finished |= token == eos_id
        ids = torch.cat([ids, token[:, None]], dim=1)
        if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
            break
        if cache is not None and cache.length < max_len:
            logits = model(token[:, None], cache=cache)[:, -1]
        else:
            cache = None
            logits = model(ids[:, -max_len:])[:, -1]
    return (ids, torch.stack(all_logits, dim=1)) if return_logits else ids


def beam_search(step: Callable[[Tensor, DecodeCache], Tensor], cache: DecodeCache, first: Tensor,
                beam: int, max_new_tokens: int, eos_id: int | None,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search over a cached decoder.

    step(tokens (N, 1), cache) -> logits (N, V) for N = B·beam rows; ``cache`` already holds
    B·beam rows (each source / prompt repeated ``beam`` times); ``first`` (B,) is the token
    fed first. A hypothesis scores sum(log p) / len^length_penalty (len counts the tokens it
    generated, eos included). Returns the best continuation of each of the B inputs.
    """
    B, device = first.size(0), first.device
    scores = torch.full((B, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step does not pick duplicates
    tokens = first.repeat_interleave(beam)[:, None]  # (B·beam, 1)
    history = [[[] for _ in range(beam)] for _ in range(B)]
    done: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for t in range(max_new_tokens):
        logp = F.log_softmax(step(tokens, cache).float(), dim=-1)  # (B·beam, V)
        V = logp.size(-1)
        cand = (scores.view(-1, 1) + logp).view(B, beam * V)
        top_scores, top_index = cand.topk(2 * beam, dim=-1)
        new_scores = torch.full((B, beam), float("-inf"), device=device)
        rows, next_tokens, new_history = [], [], []
        for b in range(B):
            kept: list[list[int]] = []
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist()):
                source, token = divmod(index, V)
                hyp = history[b][source] + [token]
                if eos_id is not None and token == eos_id:
                    if len(done[b]) < beam or score / len(hyp) ** length_penalty > min(done[b])[0]:
                        done[b].append((score / len(hyp) ** length_penalty, hyp[:-1]))
                        done[b] = sorted(done[b], reverse=True)[:beam]
                    continue
                if score == float("-inf") or len(kept) == beam:
                    continue
                new_scores[b, len(kept)] = score
                rows.append(b * beam + source)
                next_tokens.append(token)
                kept.append(hyp)
            while len(kept) < beam:  # fewer than beam live candidates: pad with dead beams
                rows.append(b * beam)
                next_tokens.append(eos_id if eos_id is not None else 0)
                kept.append(history[b][0])
            new_history.append(kept)
        scores, history = new_scores, new_history
        best_live = scores.max(dim=1).values / (t + 1) ** length_penalty
        if all(len(done[b]) == beam and best_live[b] <= done[b][-1][0] for b in range(B)):
            break
        cache.reorder(torch.tensor(rows, device=device))
        tokens = torch.tensor(next_tokens, device=device)[:, None]
    results = []
    for b in range(B):
        finals = done[b] + [(scores[b, k].item() / max(len(history[b][k]), 1) ** length_penalty, history[b][k])
                            for k in range(beam) if scores[b, k] > float("-inf")]
        results.append(max(finals, key=lambda x: x[0])[1] if finals else [])
    return results


def decoder_start(model, tokenizer) -> int:
    """The id a translator's decoder starts from: model.decoder_start_id where set, else the tokenizer's bos."""
    start = getattr(model.config, "decoder_start_id", None)
    return tokenizer.bos_id if start is None else start


@torch.no_grad()
def translate(model, src_ids: Tensor, bos_id: int, eos_id: int, max_new_tokens: int = 128,
              beam: int = 1, length_penalty: float = 1.0, src_mask: Tensor | None = None) -> list[list[int]]:
    """Decode a Seq2Seq model: src_ids (B, S) -> B lists of target ids (without bos/eos)."""
    src_mask = model.source_mask(src_ids, src_mask)
    memory = model.encode(src_ids, src_mask)
    B = src_ids.size(0)
    limit = min(max_new_tokens, model.config.max_len - 1)
    if beam > 1:
        memory = memory.repeat_interleave(beam, dim=0)
        src_mask = src_mask.repeat_interleave(beam, dim=0) if src_mask is not None else None
    cache = model.new_cache(memory, src_mask, limit + 1)
    step = lambda tokens, c: model.decode(tokens, cache=c)[:, -1]  # noqa: E731
    first = torch.full((B,), bos_id, dtype=torch.long, device=src_ids.device)
    if beam > 1:
        return beam_search(step, cache, first, beam, limit, eos_id, length_penalty)
    out, token = [[] for _ in range(B)], first[:, None]
    finished = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
    for _ in range(limit):
        token = step(token, cache).argmax(dim=-1, keepdim=True)  # (B, 1)
        for b in (~finished).nonzero().flatten().tolist():
            if token[b, 0].item() != eos_id:
                out[b].append(token[b, 0].item())
        finished |= token[:, 0] == eos_id
        if bool(finished.all()):
            break
    return out
