"""Translation (task: translate): source and target padded apart, teacher-forced decoding."""

from __future__ import annotations

import torch

from bigbatch.config import Config, ModelConfig
from bigbatch.tasks.base import Task


class Translation(Task):
    name = "translate"
    best_metrics = ("bleu", "loss")
    decodes = True

    def decoded_scores(self, model, batches, tokenizer, device) -> dict:
        """Greedy BLEU / chrF (sacreBLEU) of every source in ``batches``."""
        from bigbatch.evaluate.evaluate import translation_scores

        scores = translation_scores(model, batches, tokenizer, device, max_sentences=None)
        return {"bleu": scores["bleu"], "chrf": scores["chrf"], "bleu_sentences": scores["sentences"]}

    def input_tokens(self, batch: dict) -> int:
        return int(batch["src_mask"].sum() + batch["tgt_mask"].sum())  # source and target tokens both

    def describe(self, result: dict, data, valid, summary: dict) -> str:
        if "bleu" not in result:  # not decoded (the model was sharded)
            return ""
        return f", BLEU {result['bleu']:.2f}, chrF {result['chrf']:.2f} (greedy, {result['bleu_sentences']} sentences)"

    def worst_case_batch(self, cfg: Config, rows: int, device) -> dict:
        g = torch.Generator().manual_seed(0)
        T, V = cfg.model.max_len, cfg.model.vocab_size
        return {"src_ids": torch.randint(0, V, (rows, T), generator=g).to(device),
                "src_mask": torch.ones(rows, T, dtype=torch.bool, device=device),
                "tgt_ids": torch.randint(0, V, (rows, T + 1), generator=g).to(device),
                "tgt_mask": torch.ones(rows, T + 1, dtype=torch.bool, device=device)}

    def activation_layers(self, m: ModelConfig) -> int:
        return (m.n_encoder_layers or m.n_layers) + 2 * (m.n_decoder_layers or m.n_layers)


def translate_text(model, tokenizer, text: str, beam: int = 1, length_penalty: float = 1.0) -> str:
    """The model's translation of ``text`` (cut to model.config.max_len tokens): greedy, or beam search."""
    from bigbatch.nn.generate import decoder_start, translate

    max_len = model.config.max_len
    ids = torch.from_numpy(tokenizer.encode(text, special=True)[:max_len].astype("int64"))[None]
    out = translate(model, ids, decoder_start(model, tokenizer), tokenizer.eos_id, max_len - 1, beam=beam,
                    length_penalty=length_penalty)
    return tokenizer.decode(out[0])
