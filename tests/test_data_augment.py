"""Training-time augmentation: speed and the telephone line, the shares they take, canvases."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from whisfusion.canvas import build_canvas, canvas_length
from whisfusion.config import CanvasConfig
from whisfusion.data.audio_io import SAMPLE_RATE
from whisfusion.data.augment import (
    SPEED_FACTORS,
    Augmenter,
    resized_canvas,
    speed_change,
    telephone_line,
)
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
    with pytest.raises(ValueError, match="data.augment_speed"):
        Augmenter(0.0, share, CANVAS, EOS)
    with pytest.raises(ValueError, match="data.augment_speed.*canvas"):
        Augmenter(0.0, 0.5)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_a_speed_change_moves_tempo_and_pitch_together(factor):
    audio = _tones([500], seconds=2.0)
    played = speed_change(audio, factor)
    assert played.dtype == np.float32
    assert played.size == pytest.approx(audio.size / factor, abs=2)
    freqs = np.fft.rfftfreq(played.size, 1 / SAMPLE_RATE)
    assert freqs[np.argmax(np.abs(np.fft.rfft(played)))] == pytest.approx(500 * factor, abs=2)


EOS = 1
CANVAS = CanvasConfig(r_max=6.0, margin=2, min_len=4, max_len=64, multiple=1)


def test_a_canvas_is_padded_or_cut_and_refused_when_its_text_no_longer_fits():
    canvas = build_canvas([7, 8, 9], 5, EOS, 8)  # [lang] 3 tokens, 4 EOS
    assert resized_canvas(canvas, 10, EOS).tolist() == [5, 7, 8, 9, 1, 1, 1, 1, 1, 1]
    assert resized_canvas(canvas, 5, EOS).tolist() == [5, 7, 8, 9, 1]
    assert resized_canvas(canvas, 4, EOS) is None  # no EOS would be left


def _spoken(i: int, seconds: float, n_tokens: int) -> Example:
    audio = _tones([300 + i], seconds=seconds)
    length = canvas_length(audio.size / SAMPLE_RATE, CANVAS)
    canvas = build_canvas(list(range(10, 10 + n_tokens)), 5, EOS, length)
    return Example(f"u{i}", "en", "words", audio, canvas)


def test_the_speed_augmenter_recuts_each_canvas_to_its_new_duration():
    augmenter = Augmenter(0.0, 1.0, CANVAS, EOS, max_duration=1.05)
    rng = random.Random(0)
    out = [augmenter(_spoken(i, 1.0, 3), rng) for i in range(40)]
    factors = {round(1.0 / (o.duration), 1) for o in out if o.augmented}
    assert factors == {1.1}  # played slower, 1.0 s would become 1.11 s > max_duration
    assert sum(o.augmented for o in out) == pytest.approx(20, abs=9)
    for o in out:
        assert o.canvas.numel() == canvas_length(o.duration, CANVAS)
        assert o.canvas[:4].tolist() == [5, 10, 11, 12] and int(o.canvas[4]) == EOS
    # text that fills a canvas leaves no room to speak it faster
    full = _spoken(0, 2.0, canvas_length(2.0, CANVAS) - 2)
    open_ended = Augmenter(0.0, 1.0, CANVAS, EOS)
    faster = [open_ended(full, rng) for _ in range(20)]
    assert {o.augmented for o in faster} == {True, False}
    assert all(o.duration > 2.0 for o in faster if o.augmented)
    assert sorted(SPEED_FACTORS) == [0.9, 1.1]
