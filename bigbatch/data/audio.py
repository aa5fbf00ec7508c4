"""Audio for task=audio: builtin:spoken-digits (synthesised with espeak-ng) and a user's folder of WAV files.

Prepared shards hold each clip as model.clip_seconds x model.sample_rate 16-bit samples (stored as uint16
"tokens" = sample + 32768): the same memory-mapped shards, streaming and exact resume as text.

    builtin:spoken-digits   "zero" .. "nine" spoken by espeak-ng (the libespeak-ng that PyPI's espeakng-loader
                            bundles: pip install espeakng-loader) by each of its ~100 voice variants, each word
                            COMBOS times in an accent x speed x pitch drawn (seeded) from 8 English accents x 3
                            speeds x 3 pitches; whole variants (speakers) are held out: test and valid voices
                            are never heard in training
    DIR                     DIR/CLASS/*.wav (or DIR/{train,valid,test}/CLASS/*.wav): 16-bit PCM, any rate and
                            channel count (mixed to mono, resampled with scipy's polyphase filter)
"""

from __future__ import annotations

import ctypes
import wave
from pathlib import Path
from typing import Iterator

import numpy as np

from bigbatch.data.images import FIXED_SPLIT, class_folders
from bigbatch.errors import UserError

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc", "en"]
SPEEDS = (130, 165, 200)  # words per minute
PITCHES = (30, 50, 70)  # espeak's 0..100
COMBOS = 6  # accent x speed x pitch settings per variant and word
MAX_SECONDS = 120  # at most this much of a WAV file is read (clips are seconds long; a long file stays bounded)
GENERATOR_VERSION = 1  # bump when the synthesis settings change (part of the data's fingerprint)


class PCMTokenizer:
    """16-bit samples as ids 0..65535 (sample + 32768); no special ids."""

    kind = "pcm16"
    vocab_size = 65536
    eos_id = pad_id = bos_id = None

    def save(self, directory: Path) -> None:
        """Nothing to save."""

    def describe(self) -> dict:
        return {"kind": "pcm16", "vocab_size": self.vocab_size}


# --------------------------------------------------------------------------- espeak-ng


class _Espeak:
    """libespeak-ng through ctypes, synthesising into memory (AUDIO_OUTPUT_SYNCHRONOUS with a callback)."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise UserError("builtin:spoken-digits needs a speech synthesiser: pip install espeakng-loader (it bundles "
                            "libespeak-ng; or pip install 'bigbatch[audio]')") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.chunks: list[np.ndarray] = []
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, n, events):
            if n > 0:
                self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = callback(collect)  # kept alive as long as the library may call it
        # AUDIO_OUTPUT_SYNCHRONOUS, and espeakINITIALIZE_DONT_EXIT: a bad data path returns an error, not exit()
        self.rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0x8000)
        if self.rate <= 0:
            raise UserError(f"libespeak-ng ({espeakng_loader.get_library_path()}) failed to initialise")
        self.lib.espeak_SetSynthCallback(self._callback)
        self.variants = sorted(p.name for p in (Path(espeakng_loader.get_data_path()) / "voices" / "!v").iterdir()
                               if p.is_file() and " " not in p.name)

    def say(self, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise UserError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, speed, 0)  # espeakRATE
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH
        self.chunks.clear()
        data = text.encode()
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if status != 0:
            raise UserError(f"espeak-ng failed to synthesise {text!r} with voice {voice!r} (error {status})")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)


_ENGINE: list[_Espeak] = []


def espeak() -> _Espeak:
    if not _ENGINE:
        _ENGINE.append(_Espeak())
    return _ENGINE[0]


def voice_split(variant: str) -> str:
    """The split of a voice variant (a speaker): 20% test, 10% valid by a hash of its name."""
    from bigbatch.data.builtin import split_of

    return split_of(f"espeak-variant/{variant}", valid=0.1, test=0.2)


def spoken_digits(task: str) -> Iterator[tuple[str, dict]]:
    """(key, {"waveform" int16 at the synthesiser's rate, "rate", "label", split}): every variant says every word
    COMBOS times, in settings drawn from accents x speeds x pitches by a generator seeded with the variant and
    word (the same clips on every machine with the same espeak-ng); the split follows the variant."""
    import hashlib

    if task != "audio":
        raise UserError(f"builtin:spoken-digits is an audio data set; set task=audio (got {task})")
    engine = espeak()
    settings = [(a, s, p) for a in ACCENTS for s in SPEEDS for p in PITCHES]
    for variant in engine.variants:
        split = voice_split(variant)
        for word in WORDS:
            seed = int.from_bytes(hashlib.sha1(f"{variant}/{word}".encode()).digest()[:8], "big")
            for k in np.random.default_rng(seed).choice(len(settings), size=COMBOS, replace=False):
                accent, speed, pitch = settings[k]
                wav = engine.say(word, f"{accent}+{variant}", speed, pitch)
                if len(wav):
                    yield f"{accent}+{variant}/{speed}/{pitch}/{word}", {"waveform": wav, "rate": engine.rate,
                                                                          "label": word, FIXED_SPLIT: split}


def spoken_digits_fingerprint() -> list:
    try:
        from importlib.metadata import version

        engine = version("espeakng-loader")
    except Exception:  # noqa: BLE001 - not installed: spoken_digits says so in one line when it is read
        engine = None
    return ["espeak-ng", engine, GENERATOR_VERSION, ACCENTS, SPEEDS, PITCHES, WORDS, COMBOS]


# --------------------------------------------------------------------------- a folder of WAV files


def wav_folder(source: str, skip_bad: bool, bad) -> Iterator[tuple[str, dict]]:
    """(key, {"path", "label"[, split]}) of DIR/CLASS/*.wav (or DIR/{train,valid,test}/CLASS/*.wav), sorted."""
    for cls, split, files in class_folders(source, lambda f: f.suffix.lower() == ".wav", "CLIP.wav"):
        if not files:
            bad.add(str(cls), "no .wav files", skip_bad)
            continue
        for f in files:
            key = str(f.relative_to(Path(source).expanduser()))
            yield key, {"path": str(f), "label": cls.name, FIXED_SPLIT: split(key)}


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono int16 samples, sample rate) of a 16-bit PCM WAV file (channels averaged); ValueError saying why
    when the file is not one."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate, n = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
            if width != 2:
                raise ValueError(f"a WAV of {8 * width}-bit samples; expected 16-bit PCM")
            data = np.frombuffer(w.readframes(min(n, MAX_SECONDS * rate)), dtype="<i2")  # bounded per file
    except (wave.Error, EOFError, OSError) as e:
        raise ValueError(f"not a readable WAV file ({type(e).__name__}: {str(e)[:100] or 'the file ends early'})") from None
    if channels > 1:
        data = data[: len(data) // channels * channels].reshape(-1, channels).mean(axis=1).astype(np.int16)
    return data, rate


def to_clip(record: dict, sample_rate: int, clip_samples: int) -> np.ndarray:
    """A record's audio as exactly ``clip_samples`` int16 samples at ``sample_rate``: read (a "path") or given
    ("waveform" + "rate"), resampled (scipy.signal.resample_poly), the loudest clip_samples window kept of a
    longer clip, a shorter one centred in silence."""
    from math import gcd

    from scipy.signal import resample_poly

    if "waveform" in record:
        wav, rate = np.asarray(record["waveform"], dtype=np.int16), int(record["rate"])
    else:
        wav, rate = read_wav(record["path"])
    if len(wav) == 0:
        raise ValueError("an empty clip")
    if rate != sample_rate:
        g = gcd(rate, sample_rate)
        wav = np.clip(np.rint(resample_poly(wav.astype(np.float64), sample_rate // g, rate // g)), -32768, 32767)
        wav = wav.astype(np.int16)
    if len(wav) > clip_samples:  # the window of most energy: a long recording keeps its spoken part
        energy = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
        start = int(np.argmax(energy[clip_samples:] - energy[:-clip_samples]))
        return wav[start : start + clip_samples]
    out = np.zeros(clip_samples, dtype=np.int16)
    start = (clip_samples - len(wav)) // 2
    out[start : start + len(wav)] = wav
    return out


def load_wav_file(path: str | Path, sample_rate: int, clip_samples: int) -> np.ndarray:
    """A WAV file for prediction (bigbatch classify), prepared as in training, or one line naming it."""
    try:
        return to_clip({"path": str(path)}, sample_rate, clip_samples)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def augment_shift(waves: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Training augmentation of clips (B, N): each shifted in time by up to ``max_shift`` samples either way,
    filled with silence, and scaled by a gain of 0.5..1.5 (the front end standardises level, so the gain
    mostly changes the quantisation noise)."""
    b, n = waves.shape
    out = np.zeros_like(waves)
    shifts = rng.integers(-max_shift, max_shift + 1, size=b)
    for i, s in enumerate(shifts):
        if s >= 0:
            out[i, s:] = waves[i, : n - s]
        else:
            out[i, : n + s] = waves[i, -s:]
    gain = rng.uniform(0.5, 1.5, size=(b, 1))
    return np.clip(np.rint(out * gain), -32768, 32767).astype(np.int16)
