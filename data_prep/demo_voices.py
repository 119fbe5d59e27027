"""Voices of the demo corpus: which synthesizer voices speak training and held-out sentences,
and the synthesis of utterances.

A voice is `engine:name`, e.g. `espeak:en-us+m3` (espeak-ng voice `en-us`, variant `m3`),
`flite:slt`, `festival:pc_diphone`. Engines (Debian packages, all free software):
    espeak   espeak-ng (GPL-3+), every language: formant synthesis, many voices and variants
    flite    flite (BSD-style, CMU), English: diphone and cluster-unit voices
    festival festival (X11-style) with festvox-italp16k / festvox-itapc16k (GPL-2+, Italian
             diphone voices) and festvox-ru (GPL-3, a Russian cluster-unit voice)
Training and held-out (validation and test) utterances use disjoint voices: espeak-ng variants
are split into two disjoint sets, some languages hold out whole espeak-ng voices, and some
voices of the other engines speak only held-out sentences, so every held-out utterance is
spoken by a voice training never heard.
"""

from __future__ import annotations

import functools
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
# Voices of other engines per language: (training, held out only), `engine:name`.
OTHER_VOICES: dict[str, tuple[list[str], list[str]]] = {
    # kal16 and kal are one speaker: only the 16 kHz one
    "en": (["flite:kal16", "flite:awb", "flite:rms"], ["flite:slt"]),
    "it": (["festival:pc_diphone"], ["festival:lp_diphone"]),
    # about a second per sentence: held out only, where it costs least
    "ru": ([], ["festival:msu_ru_nsh_clunits"]),
}
# Share of a split's utterances spoken by the other engines, where the language has some.
OTHER_ENGINE_SHARE = 0.25
# Text encoding each festival voice reads.
FESTIVAL_ENCODING = {"pc_diphone": "latin-1", "lp_diphone": "latin-1"}
# Speaking rate (words per minute; other engines stretch durations by RATE_NEUTRAL / rate) and
# espeak-ng pitch (0-99) ranges.
RATE_WPM = (130, 190)
RATE_NEUTRAL = 165
PITCH = (35, 65)
# Utterances per synthesis job: one festival process speaks a whole batch (its start-up takes
# about a second).
BATCH = 25
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
    rate, pitch, u = rng.randint(*RATE_WPM), rng.randint(*PITCH), rng.random()
    train, held = OTHER_VOICES.get(lang, ([], []))
    others = held if held_out else train  # these voices have no variants to tell them apart
    if others and u < OTHER_ENGINE_SHARE:
        engine, name = rng.choice(others).split(":")
        return Voice(engine, name, rate, pitch)
    train, held = ESPEAK_VOICES[lang]
    base = rng.choice(train + held if held_out else train)
    variant = rng.choice(HELD_OUT_VARIANTS if held_out else TRAIN_VARIANTS)
    return Voice("espeak", f"{base}+{variant}" if variant else base, rate, pitch)


@functools.cache
def engine_versions() -> dict[str, str]:
    """Version of every engine (in the corpus fingerprint: another version, another corpus).

    Raises:
        RuntimeError: an engine is not installed.
    """
    missing = [tool for tool in ("espeak-ng", "flite", "festival") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed: run `make tts` (as root)")
    version = {
        "espeak": ["espeak-ng", "--version"],
        "flite": ["flite", "--version"],
        "festival": ["festival", "--version"],
    }
    return {
        name: subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        for name, cmd in version.items()
    }


def _run(cmd: list[str], what: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(cmd, input=stdin, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {result.stderr.decode(errors='replace')[-300:]}")
    return result.stdout


def _espeak(items: list[tuple[str, Voice, str]]) -> list[bytes]:
    return [
        _run(
            ["espeak-ng", "-v", v.name, "-s", str(v.rate), "-p", str(v.pitch), "--stdout"],
            f"espeak-ng {v.name} on {text!r}",
            text.encode("utf-8"),
        )
        for text, v, _ in items
    ]


def _flite(items: list[tuple[str, Voice, str]]) -> list[bytes]:
    out = []
    for text, v, path in items:
        stretch = f"duration_stretch={RATE_NEUTRAL / v.rate:.3f}"
        wav = Path(path + ".wav")
        cmd = ["flite", "-voice", v.name, "--setf", stretch, "-t", text, "-o", str(wav)]
        _run(cmd, f"flite {v.name} on {text!r}")
        out.append(_take(wav, f"flite {v.name} on {text!r}"))
    return out


def _take(wav: Path, what: str) -> bytes:
    """The bytes of a synthesizer's output file, which is then removed."""
    if not wav.is_file():
        raise RuntimeError(f"{what} wrote no audio")
    data = wav.read_bytes()
    wav.unlink()
    return data


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(items: list[tuple[str, Voice, str]]) -> list[bytes]:
    """One festival process per voice speaks all of that voice's items."""
    out: dict[str, bytes] = {}
    for name in dict.fromkeys(v.name for _, v, _ in items):
        mine = [(text, v, path) for text, v, path in items if v.name == name]
        lines = [f"(voice_{name})"]
        for text, v, path in mine:
            lines.append(f"(Parameter.set 'Duration_Stretch {RATE_NEUTRAL / v.rate:.3f})")
            lines.append(
                f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) "
                f"{_scheme_string(path + '.wav')} 'riff)"
            )
        script = Path(mine[0][2]).with_suffix(".scm")
        script.write_bytes("\n".join(lines).encode(FESTIVAL_ENCODING.get(name, "utf-8")))
        try:
            _run(["festival", "-b", str(script)], f"festival {name} ({script})")
        finally:
            script.unlink()
        for text, _, path in mine:
            out[path] = _take(Path(path + ".wav"), f"festival {name} on {text!r}")
    return [out[path] for _, _, path in items]


ENGINES = {"espeak": _espeak, "flite": _flite, "festival": _festival}


def synthesize(batch: list[tuple[str, Voice, str]]) -> list[float]:
    """Speak each `(text, voice, out_path)` into a 16 kHz mono FLAC file at `out_path`.

    Returns:
        The durations (s), in order.
    """
    spoken: dict[str, bytes] = {}
    for engine in dict.fromkeys(v.engine for _, v, _ in batch):
        mine = [item for item in batch if item[1].engine == engine]
        spoken.update(zip((p for _, _, p in mine), ENGINES[engine](mine), strict=True))
    durations = []
    for text, voice, path in batch:
        samples, rate_hz = read_audio(spoken[path])
        wave = to_mono_16k(samples, rate_hz)
        if float(np.sqrt(np.mean(wave**2))) < MIN_RMS:
            raise RuntimeError(f"{voice.speaker} produced silence for {text!r}")
        sf.write(path, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        durations.append(wave.size / SAMPLE_RATE)
    return durations
