"""Voices of the demo corpus: which synthesizer voices speak training and held-out sentences,
and the synthesis of one utterance.

A voice is `engine:name`, e.g. `espeak:en-us+m3` (espeak-ng voice `en-us`, variant `m3`).
Training and held-out (validation and test) utterances use disjoint voices: espeak-ng variants
are split into two disjoint sets, and some languages hold out whole espeak-ng voices, so every
held-out utterance is spoken by a voice training never heard.
"""

from __future__ import annotations

import functools
import random
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from whisfusion.data.audio_io import SAMPLE_RATE, read_audio, to_mono_16k

# espeak-ng voices per language: (training, held out only). Every voice also speaks held-out
# sentences, with a held-out variant.
ESPEAK_VOICES: dict[str, tuple[list[str], list[str]]] = {
    "en": (["en-us", "en-gb"], ["en-gb-scotland", "en-029"]),
    "de": (["de"], []),
    "fr": (["fr-fr", "fr-be"], ["fr-ch"]),
    "es": (["es"], ["es-419"]),
    "it": (["it"], []),
    "pt": (["pt", "pt-br"], []),
    "nl": (["nl"], []),
    "ru": (["ru"], ["ru-lv"]),
    "zh": (["cmn-latn-pinyin"], []),
    "ja": (["ja"], []),
    "ko": (["ko"], []),
}
# espeak-ng variants (timbre, formants; the klatt ones another synthesis method), "" = the
# voice's own. The held-out ones never speak a training sentence.
TRAIN_VARIANTS = [
    "",
    "m1",
    "m2",
    "m3",
    "m5",
    "m6",
    "f1",
    "f2",
    "f5",
    "klatt",
    "klatt2",
    "adam",
    "benjamin",
    "max",
    "steph",
    "linda",
    "paul",
    "robert",
]
HELD_OUT_VARIANTS = ["m4", "m7", "f3", "f4", "klatt4", "john", "david", "belinda", "Annie"]
# Speaking rate (words per minute) and pitch (0-99) ranges.
RATE_WPM = (130, 190)
PITCH = (35, 65)
# Quieter than this RMS, the synthesizer produced no speech.
MIN_RMS = 1e-3


@dataclass(frozen=True)
class Voice:
    """One synthesis setting: engine, voice name, rate (words per minute), pitch (0-99)."""

    engine: str
    name: str
    rate: int
    pitch: int

    @property
    def speaker(self) -> str:
        """The manifest's speaker: engine and voice, without rate and pitch."""
        return f"{self.engine}:{self.name}"


def languages() -> list[str]:
    return sorted(ESPEAK_VOICES)


def draw_voice(lang: str, held_out: bool, rng: random.Random) -> Voice:
    """A voice for one utterance of `lang`: a training voice, or one training never uses."""
    train, held = ESPEAK_VOICES[lang]
    base = rng.choice(train + held if held_out else train)
    variant = rng.choice(HELD_OUT_VARIANTS if held_out else TRAIN_VARIANTS)
    name = f"{base}+{variant}" if variant else base
    return Voice("espeak", name, rng.randint(*RATE_WPM), rng.randint(*PITCH))


@functools.cache
def espeak_version() -> str:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng; `make tts`)")
    return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()


def _espeak(text: str, voice: Voice) -> bytes:
    cmd = ["espeak-ng", "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch)]
    result = subprocess.run([*cmd, "--stdout"], input=text.encode("utf-8"), capture_output=True)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(
            f"espeak-ng {voice.name} failed on {text!r}: {result.stderr.decode()[-300:]}"
        )
    return result.stdout


ENGINES = {"espeak": _espeak}


def synthesize(job: tuple[str, Voice, str]) -> float:
    """Speak `text` with `voice` into a 16 kHz mono FLAC file at `out_path`; returns its
    duration (s)."""
    text, voice, out_path = job
    samples, rate_hz = read_audio(ENGINES[voice.engine](text, voice))
    wave = to_mono_16k(samples, rate_hz)
    if float(np.sqrt(np.mean(wave**2))) < MIN_RMS:
        raise RuntimeError(f"{voice.speaker} produced silence for {text!r}")
    sf.write(out_path, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return wave.size / SAMPLE_RATE
