"""Audio classification with a spectrogram-patch Transformer (task: audio): int16 clip batches, one label each."""

from __future__ import annotations

import torch

from bigbatch.config import Config
from bigbatch.tasks.vision import Vision


class Audio(Vision):
    """A classifier of clips: batches {"waveform": (B, clip_samples) int16, "labels", "input_tokens"}."""

    name = "audio"

    def worst_case_batch(self, cfg: Config, rows: int, device) -> dict:
        g = torch.Generator().manual_seed(0)
        n = int(cfg.model.clip_seconds * cfg.model.sample_rate)
        waves = torch.randint(-32768, 32767, (rows, n), generator=g, dtype=torch.int16)
        return {"waveform": waves.to(device), "labels": torch.zeros(rows, dtype=torch.long, device=device),
                "input_tokens": rows * cfg.model.max_len}

    def predict(self, model, tokenizer, labels: list, item: str) -> tuple[object, float]:
        return classify_wav(model, labels, item)


def classify_wav(model, labels: list, path: str) -> tuple[object, float]:
    """(label, probability) of the most likely class of the WAV file ``path`` (resampled, cut as in training)."""
    from bigbatch.data.audio import load_wav_file

    m = model.config
    wave = torch.from_numpy(load_wav_file(path, m.sample_rate, model.clip_samples))[None]
    with torch.no_grad():
        probs = model(wave.to(next(model.parameters()).device)).float().softmax(-1)[0]
    k = int(probs.argmax())
    return labels[k], float(probs[k])
