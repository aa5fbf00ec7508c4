"""task=audio: the mel filterbank against the textbook formula, WAV reading, a WAV folder and
builtin:spoken-digits through the command line."""

import json
import math
import wave

import numpy as np
import pytest
import torch

from bigbatch.data import audio
from bigbatch.errors import UserError
from bigbatch.nn.audio import AudioClassifier, LogMel, hz_to_mel, mel_filterbank
from helpers import run_cli as cli


def test_mel_filterbank_matches_the_textbook_triangles():
    n_fft, n_mels, sr = 512, 10, 8000
    fb = mel_filterbank(n_fft, n_mels, sr).double()
    mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = [inv(mel(0) + k * (mel(sr / 2) - mel(0)) / (n_mels + 1)) for k in range(n_mels + 2)]
    for i in range(n_fft // 2 + 1):
        f = i * sr / n_fft
        for k in range(n_mels):
            lo, c, hi = edges[k], edges[k + 1], edges[k + 2]
            want = (f - lo) / (c - lo) if lo <= f <= c else (hi - f) / (hi - c) if c < f <= hi else 0.0
            assert fb[i, k].item() == pytest.approx(want, abs=1e-5)
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.5)  # the mel scale's anchor


def test_logmel_puts_a_tone_in_its_band():
    sr = 16000
    t = torch.arange(sr) / sr
    front = LogMel(sr, 40)
    spec = front(torch.sin(2 * math.pi * 1000 * t)[None])  # (1, 40, frames)
    assert spec.shape == (1, 40, sr // 160 + 1)
    centres = torch.argmax(front.fb, dim=0)  # the FFT bin each filter peaks at
    band = int(torch.argmin((centres.float() * sr / front.n_fft - 1000).abs()))
    assert int(spec[0].mean(dim=1).argmax()) in (band - 1, band, band + 1)
    loud, quiet = front((torch.sin(2 * math.pi * 440 * t) * 0.9)[None]), front((torch.sin(2 * math.pi * 440 * t) * 0.1)[None])
    r = torch.corrcoef(torch.stack([loud.flatten(), quiet.flatten()]))[0, 1]
    assert r > 0.98 and abs(float(loud.mean())) < 1e-4 and float(loud.std()) == pytest.approx(1.0, abs=1e-3)


def _write_wav(path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2" if width == 2 else np.uint8).tobytes())


def test_wav_reading_resampling_and_bad_files(tmp_path):
    t = np.arange(8000) / 8000
    tone = (np.sin(2 * np.pi * 300 * t) * 10000).astype(np.int16)
    _write_wav(tmp_path / "mono.wav", tone, 8000)
    _write_wav(tmp_path / "stereo.wav", np.stack([tone, tone], axis=1).reshape(-1), 8000, channels=2)
    a = audio.to_clip({"path": str(tmp_path / "mono.wav")}, 16000, 16000)
    b = audio.to_clip({"path": str(tmp_path / "stereo.wav")}, 16000, 16000)
    assert a.shape == (16000,) and a.dtype == np.int16 and np.array_equal(a, b)
    spectrum = np.abs(np.fft.rfft(a.astype(np.float64)))
    assert abs(int(spectrum.argmax()) - 300) <= 1  # 1 s at 16 kHz: bin = Hz; the tone survived resampling
    short = audio.to_clip({"waveform": np.ones(100, dtype=np.int16), "rate": 16000}, 16000, 1000)
    assert short.sum() == 100 and short[450:550].sum() == 100  # centred in silence
    _write_wav(tmp_path / "8bit.wav", np.full(100, 128), 8000, width=1)
    with pytest.raises(ValueError, match="8-bit samples; expected 16-bit PCM"):
        audio.read_wav(tmp_path / "8bit.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....nope")
    with pytest.raises(ValueError, match="not a readable WAV"):
        audio.read_wav(tmp_path / "junk.wav")


def _tone_folder(root, n=40, seed=0):
    """Two classes: low (200-300 Hz) and high (1500-2500 Hz) tones at 8 kHz or 22.05 kHz, some stereo."""
    rng = np.random.default_rng(seed)
    for cls, (lo, hi) in (("low", (200, 300)), ("high", (1500, 2500))):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            rate = (8000, 22050)[i % 2]
            length = int(rate * rng.uniform(0.3, 0.9))
            t = np.arange(length) / rate
            x = np.sin(2 * np.pi * rng.uniform(lo, hi) * t) * rng.uniform(2000, 20000) + rng.normal(0, 300, length)
            _write_wav(root / cls / f"{i}.wav", np.clip(x, -32768, 32767), rate)
    return root


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("wav") / "tones"
    for split, n, seed in (("train", 40, 0), ("valid", 12, 1), ("test", 12, 2)):
        _tone_folder(d / split, n=n, seed=seed)
    run = d.parent / "run"
    proc = cli("train", "--run-dir", run, "--no-progress", "--json", "--set", "task=audio",
               "--set", f"data.source={d}", "--set", "model.d_model=32", "--set", "model.n_layers=1",
               "--set", "model.clip_seconds=0.5", "--set", "model.n_mels=32", "--set", "train.max_steps=40",
               "--set", "train.global_batch_size=16", "--set", "optim.lr=3e-3", "--set", "train.eval_every=0")
    return d, run, json.loads(proc.stdout)


def test_wav_folder_trains_classifies_and_evaluates(audio_run):
    d, run, summary = audio_run
    cfg = (run / "config.yaml").read_text()
    assert "sample_rate: 16000" in cfg and "augment: shift" in cfg and "tokenizer: pcm16" in cfg
    assert summary["valid_accuracy"] >= 0.9 and summary["valid_examples"] == 24
    out = json.loads(cli("classify", run, "--json", d / "test" / "high" / "3.wav").stdout)
    assert out["label"] == "high" and 0.5 < out["p"] <= 1.0
    ev = json.loads(cli("eval", run, "--split", "test", "--json").stdout)
    assert ev["baseline"]["method"] == "mfcc_logreg" and ev["accuracy"] >= 0.9 and ev["examples"] == 24
    assert ev["baseline"]["accuracy"] >= 0.9  # tones far apart: MFCC statistics separate them too
    assert (run / "plots" / "confusion-test.png").exists()
    bad = cli("classify", run, d / "nope.wav", check=False)
    assert bad.returncode == 2 and "nope.wav" in bad.stderr
    bad = cli("attention", run, d / "test" / "high" / "3.wav", "--out", d / "x.png", check=False)
    assert bad.returncode == 2 and "task=audio" in bad.stderr


def test_audio_shards_resume_exactly(audio_run):
    from bigbatch.config import load_config
    from bigbatch.data.pipeline import build_data
    from bigbatch.data.shards import read_manifest

    _, run, _ = audio_run
    cfg = load_config(run / "config.yaml")
    data = build_data(cfg, 4, progress=False)
    assert read_manifest(data.shard_dir)["audio"] == {"sample_rate": 16000, "clip_samples": 8000}
    data.train.next_batch()
    state = data.train.state_dict()
    want = data.train.next_batch()
    again = build_data(cfg, 4, progress=False).train
    again.load_state_dict(state)
    got = again.next_batch()
    assert torch.equal(got["waveform"], want["waveform"]) and got["waveform"].dtype == torch.int16


def test_bad_wavs_are_named_or_skipped(tmp_path):
    d = _tone_folder(tmp_path / "t", n=6)
    _write_wav(d / "low" / "eight.wav", np.full(800, 128), 8000, width=1)
    base = ["prepare", "--source", d, "--task", "audio", "--out"]
    proc = cli(*base, tmp_path / "p1", check=False)
    assert proc.returncode == 2 and "eight.wav" in proc.stderr and "16-bit" in proc.stderr
    cli(*base, tmp_path / "p2", "--set", "data.skip_bad_rows=true")
    (d / "silent").mkdir()
    proc = cli(*base, tmp_path / "p3", check=False)
    assert proc.returncode == 2 and "silent" in proc.stderr and "no .wav files" in proc.stderr


def test_spoken_digits_hold_out_whole_voices():
    pytest.importorskip("espeakng_loader")
    voices = {}
    for key, rec in audio.spoken_digits("audio"):
        voices.setdefault(key.split("/")[0].split("+", 1)[1], set()).add(rec[audio.FIXED_SPLIT])
        if len(voices) > 30:
            break
    assert all(len(s) == 1 for s in voices.values())  # every voice in exactly one split
    assert {"train", "test"} <= set().union(*voices.values())
    with pytest.raises(UserError, match="set task=audio"):
        next(audio.spoken_digits("vision"))


def test_audio_classifier_shapes_and_int16_equals_float():
    m = AudioClassifier(sample_rate=8000, clip_seconds=0.5, num_classes=4, d_model=16, n_heads=2, n_layers=1,
                        n_mels=16, patch_size=8, patch_frames=5).eval()
    w = (torch.randn(2, 4000) * 5000).to(torch.int16)
    assert m.patches(w).shape == (2, 2 * 10, 8 * 5) and m(w).shape == (2, 4)
    assert torch.allclose(m(w), m(w.float() / 32768.0), atol=1e-4)
