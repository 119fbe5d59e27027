"""Training-time augmentation: the telephone line, the share it takes, the stream and the cache."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from whisfusion.data.audio_io import SAMPLE_RATE
from whisfusion.data.augment import Augmenter, telephone_line
from whisfusion.data.samples import Example

torch.set_num_threads(1)


def _tones(freqs, seconds=1.0, amplitude=0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return sum(amplitude * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def _level(audio: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(spectrum[np.argmin(np.abs(np.fft.rfftfreq(audio.size, 1 / SAMPLE_RATE) - freq))])


@pytest.mark.parametrize("samples", [16000, 16001, 3])
def test_telephone_line_keeps_the_length_and_the_band_below_4_khz(samples):
    audio = _tones([440, 6000], seconds=2.0)[:samples]
    line = telephone_line(audio)
    assert line.shape == audio.shape and line.dtype == np.float32
    if samples < 1000:
        return
    assert _level(line, 440) == pytest.approx(_level(audio, 440), rel=0.05)
    assert _level(line, 6000) < 1e-3 * _level(audio, 6000)  # above the line's 4 kHz band
    # 8-bit companding adds noise, well below the signal
    narrow = _tones([440], seconds=2.0)[:samples]
    middle = slice(200, samples - 200)  # away from the resampler's edges
    noise = line[middle] - narrow[middle]
    assert 0 < np.sqrt(np.mean(noise**2)) < 0.05 * np.sqrt(np.mean(narrow[middle] ** 2))


def test_telephone_line_clips_what_the_line_cannot_carry():
    loud = _tones([300], amplitude=1.5)
    assert np.abs(telephone_line(loud)).max() <= 1.05


def _example(i: int) -> Example:
    return Example(f"u{i}", "en", "a b", _tones([440 + i], seconds=0.2), torch.zeros(4))


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_the_augmenter_takes_its_share_and_marks_what_it_changed(share):
    augmenter = Augmenter(share)
    rng = random.Random(0)
    examples = [_example(i) for i in range(400)]
    out = [augmenter(ex, rng) for ex in examples]
    changed = [o.augmented for o in out]
    assert sum(changed) == pytest.approx(share * len(out), abs=30)
    for ex, o in zip(examples, out, strict=True):
        assert (o.id, o.text, o.audio.shape) == (ex.id, ex.text, ex.audio.shape)
        assert np.array_equal(o.audio, ex.audio) != o.augmented
    assert augmenter.active == (share > 0)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_an_impossible_share_is_refused_by_its_key(share):
    with pytest.raises(ValueError, match="data.augment_telephone"):
        Augmenter(share)
