"""Audio front end and classifier: waveform -> log-mel spectrogram (torch.stft + a mel filterbank of our own)
-> patches (AST-style, Gong et al. 2021) -> the same Encoder as every other model.

    fb = mel_filterbank(n_fft=400, n_mels=64, sample_rate=16000)      # (n_fft // 2 + 1, n_mels)
    spec = LogMel(16000, 64)(waveform)                                # (B, n_mels, frames)
    logits = AudioClassifier(sample_rate=16000, clip_samples=16000, num_classes=10, d_model=128, n_layers=4)(waveform)
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from bigbatch.config import ModelConfig


def hz_to_mel(f):
    """The HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * math.log10(1.0 + f / 700.0) if isinstance(f, (int, float)) else 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """Triangular filters evenly spaced on the HTK mel scale: filter k rises linearly from mel point k to k + 1
    and falls to k + 2 (n_mels + 2 points from f_min to f_max), evaluated at the FFT bin frequencies
    i · sample_rate / n_fft -> (n_fft // 2 + 1, n_mels) float32, unnormalised (peak 1)."""
    f_max = sample_rate / 2.0 if f_max is None else f_max
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    points = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMel(nn.Module):
    """waveform (B, N) float in [-1, 1] (or int16 PCM) -> log-mel (B, n_mels, frames): a Hann-windowed STFT of
    25 ms windows every 10 ms (torch.stft, centred), power spectrum, the mel filterbank, log(x + 1e-6), each
    example standardised to zero mean and unit variance (the level of a recording does not matter)."""

    def __init__(self, sample_rate: int, n_mels: int):
        super().__init__()
        self.n_fft = int(round(0.025 * sample_rate))
        self.hop = int(round(0.010 * sample_rate))
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(self.n_fft, n_mels, sample_rate), persistent=False)

    def frames(self, n_samples: int) -> int:
        """Frames torch.stft gives a clip of ``n_samples`` (centred: padded by n_fft // 2 on both sides)."""
        return frame_count(n_samples, self.n_fft, self.hop)

    def forward(self, waveform: Tensor) -> Tensor:
        with torch.autocast(waveform.device.type, enabled=False):  # powers overflow fp16; keep the front end fp32
            return self._logmel(waveform)

    def _logmel(self, waveform: Tensor) -> Tensor:
        x = waveform.float() / 32768.0 if waveform.dtype == torch.int16 else waveform.float()
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, freq, frames)
        mel = torch.log(torch.einsum("bft,fm->bmt", power, self.fb) + 1e-6)
        mean = mel.mean(dim=(1, 2), keepdim=True)
        std = mel.std(dim=(1, 2), keepdim=True).clamp(min=1e-5)
        return (mel - mean) / std


def frame_count(n_samples: int, n_fft: int, hop: int) -> int:
    return 1 + (n_samples + 2 * (n_fft // 2) - n_fft) // hop


def audio_geometry(cfg: ModelConfig) -> tuple[int, int, int]:
    """(patch frames, patches along frequency, patches along time) of a clip: patch_size mel bins x
    patch_frames frames; the frames are cut to a whole number of patches."""
    if cfg.sample_rate < 1000 or cfg.clip_seconds <= 0 or not cfg.patch_size:
        raise ValueError(f"model.sample_rate={cfg.sample_rate}, clip_seconds={cfg.clip_seconds}, "
                         f"patch_size={cfg.patch_size}: unresolved or invalid")
    frames = frame_count(int(cfg.clip_seconds * cfg.sample_rate), int(round(0.025 * cfg.sample_rate)),
                         int(round(0.010 * cfg.sample_rate)))
    if cfg.n_mels % cfg.patch_size:
        raise ValueError(f"model.patch_size={cfg.patch_size} does not divide model.n_mels={cfg.n_mels}")
    if frames < cfg.patch_frames:
        raise ValueError(f"a clip of {cfg.clip_seconds} s has {frames} frames, fewer than model.patch_frames")
    return cfg.patch_frames, cfg.n_mels // cfg.patch_size, frames // cfg.patch_frames


class AudioClassifier(nn.Module):
    """Audio Spectrogram Transformer (non-overlapping patches): waveform (B, clip_samples) int16 or float ->
    logits (B, num_classes). The log-mel front end is part of the model, so a checkpoint reads raw audio."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        from bigbatch.nn.models import PatchTransformer, _resolve

        super().__init__()
        cfg = _resolve(config, overrides, ("num_classes", "sample_rate", "n_mels"))
        if not cfg.patch_size:
            cfg = dataclasses.replace(cfg, patch_size=16 if cfg.n_mels % 16 == 0 else cfg.n_mels)
        self.config = cfg
        self.frontend = LogMel(cfg.sample_rate, cfg.n_mels)
        pf, self.grid_f, self.grid_t = audio_geometry(cfg)
        self.clip_samples = int(cfg.clip_seconds * cfg.sample_rate)
        self.core = PatchTransformer()
        self.core._build(cfg, self.grid_f * self.grid_t, cfg.patch_size * pf)
        self.n_tokens = self.core.n_tokens

    def patches(self, waveform: Tensor) -> Tensor:
        """(B, N) -> (B, grid_f · grid_t, patch_size · patch_frames): frequency-major patches of the log-mel."""
        if waveform.size(-1) != self.clip_samples:
            raise ValueError(f"clips of {waveform.size(-1)} samples; the model reads {self.clip_samples} "
                             f"({self.config.clip_seconds} s at {self.config.sample_rate} Hz): pad or cut them "
                             "(bigbatch.data.audio.to_clip)")
        spec = self.frontend(waveform)
        pm, pf, gf, gt = self.config.patch_size, self.config.patch_frames, self.grid_f, self.grid_t
        spec = spec[:, :, : gt * pf]
        b = spec.size(0)
        return spec.reshape(b, gf, pm, gt, pf).permute(0, 1, 3, 2, 4).reshape(b, gf * gt, pm * pf)

    def forward(self, waveform: Tensor) -> Tensor:
        return self.core.classify_patches(self.patches(waveform).to(self.core.encoder.norm_dtype))
