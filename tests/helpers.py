"""Small synthetic tasks shared by tests."""

import torch

PAD, BOS, EOS = 0, 1, 2


def reverse_batch(batch: int, generator: torch.Generator, vocab: int = 13, min_len: int = 3, max_len: int = 8) -> dict:
    """Random sequences of tokens 3..vocab-1 with ragged lengths; the target is the reversed source.

    src_ids (B, S) right-padded with PAD; tgt_ids (B, T + 1) = BOS, reversed source, EOS, PAD...
    """
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    src = torch.full((batch, max_len), PAD)
    tgt = torch.full((batch, max_len + 2), PAD)
    for i, n in enumerate(lengths.tolist()):
        seq = torch.randint(3, vocab, (n,), generator=generator)
        src[i, :n] = seq
        tgt[i, 0] = BOS
        tgt[i, 1 : n + 1] = seq.flip(0)
        tgt[i, n + 1] = EOS
    return {"src_ids": src, "src_mask": src != PAD, "tgt_ids": tgt, "tgt_mask": tgt != PAD, "lengths": lengths}
