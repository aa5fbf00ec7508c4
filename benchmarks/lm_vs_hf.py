"""Training tokens/s of bigbatch's CausalLM vs Hugging Face GPT2LMHeadModel, same shapes, same weights.

Both run the same step (forward, cross-entropy on the logits, backward, fused AdamW) in one
process; steps of the two alternate so machine noise hits both alike. Prints a table of median
tokens/s and the ratio (ours / HF).

    python benchmarks/lm_vs_hf.py [--reps 7] [--steps 3] [--shapes default,gpt2-small]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

from bigbatch.interop.hf import from_transformers

SHAPES = {  # name: (vocab, d_model, layers, heads, seq_len, batch)
    "default": (258, 192, 4, 3, 256, 16),       # the embedded default LM of `bigbatch train`
    "gpt2-small": (50257, 768, 12, 12, 256, 4),  # GPT-2 124M at a CPU-sized batch
}


def step_fn(model, ids, logits_of):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        logits = logits_of(model, ids[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, n):
    start = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - start


def bench(name, reps, steps):
    V, d, L, H, T, B = SHAPES[name]
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=d, n_layer=L, n_head=H, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
                                  bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).train()
    ours = from_transformers(hf).train()
    ids = torch.randint(0, V, (B, T + 1))
    ours_step = step_fn(ours, ids, lambda m, x: m(x))
    hf_step = step_fn(hf, ids, lambda m, x: m(x).logits)
    ours_step(), hf_step()  # warm-up
    ours_t, hf_t = [], []
    for _ in range(reps):
        ours_t.append(B * T * steps / timed(ours_step, steps))
        hf_t.append(B * T * steps / timed(hf_step, steps))
    o, h = statistics.median(ours_t), statistics.median(hf_t)
    print(f"| {name} | {B}x{T} | {o:,.0f} | {h:,.0f} | {o / h:.2f}x |", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--shapes", default=",".join(SHAPES))
    args = p.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    print("| shape | batch | bigbatch tokens/s | HF GPT-2 tokens/s | ratio |\n|---|---|---|---|---|")
    for name in args.shapes.split(","):
        bench(name, args.reps, args.steps)


if __name__ == "__main__":
    main()
