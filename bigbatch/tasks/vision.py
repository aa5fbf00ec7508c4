"""Image classification with a Vision Transformer (task: vision): uint8 pixel batches, one label each."""

from __future__ import annotations

import torch

from bigbatch.config import Config
from bigbatch.tasks.classify import Classification


class Vision(Classification):
    """A classifier of images: batches {"pixels": (B, H, W, C) uint8, "labels", "input_tokens"}."""

    name = "vision"
    media = True

    def input_tokens(self, batch: dict) -> int:
        return int(batch["input_tokens"])  # patches (+ the class token): what the encoder reads

    def worst_case_batch(self, cfg: Config, rows: int, device) -> dict:
        g = torch.Generator().manual_seed(0)
        m = cfg.model
        pixels = torch.randint(0, 256, (rows, m.image_size, m.image_size, m.channels), generator=g, dtype=torch.uint8)
        return {"pixels": pixels.to(device), "labels": torch.zeros(rows, dtype=torch.long, device=device),
                "input_tokens": rows * m.max_len}

    def predict(self, model, tokenizer, labels: list, item: str) -> tuple[object, float]:
        return classify_image(model, labels, item)


def classify_image(model, labels: list, path: str) -> tuple[object, float]:
    """(label, probability) of the most likely class of the image file ``path`` (resized as in training)."""
    from bigbatch.data.images import load_image_file

    m = model.config
    pixels = torch.from_numpy(load_image_file(path, m.image_size, m.channels))[None]
    with torch.no_grad():
        probs = model(pixels.to(next(model.parameters()).device)).float().softmax(-1)[0]
    k = int(probs.argmax())
    return labels[k], float(probs[k])
