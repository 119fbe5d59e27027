import numpy as np
import pytest
import soundfile
import torch
from transformers import WhisperFeatureExtractor
from whisper_fixtures import synthetic_waveform

from whisfusion.audio import (
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    load_audio,
    log_mel_spectrogram,
    pad_or_trim,
)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers_feature_extractor(n_mels):
    audio = synthetic_waveform(7.3, seed=n_mels)
    reference = WhisperFeatureExtractor(feature_size=n_mels)(
        audio.numpy(), sampling_rate=SAMPLE_RATE, return_tensors="np"
    )["input_features"][0]
    ours = log_mel_spectrogram(pad_or_trim(audio), n_mels=n_mels)
    assert ours.shape == (n_mels, N_FRAMES) == reference.shape
    assert ours.dtype == torch.float32
    assert np.abs(ours.numpy() - reference).max() < 1e-4


def test_log_mel_accepts_numpy_and_padding_argument():
    audio = synthetic_waveform(2.0, seed=1)
    from_tensor = log_mel_spectrogram(pad_or_trim(audio))
    from_numpy = log_mel_spectrogram(
        audio.numpy().astype(np.float64), padding=N_SAMPLES - len(audio)
    )
    torch.testing.assert_close(from_numpy, from_tensor, rtol=0, atol=1e-6)


def test_batched_log_mel_equals_per_utterance():
    # Different loudness per row: the (max - 8) floor must be taken per utterance.
    batch = torch.stack([synthetic_waveform(3.0, seed=2), 0.01 * synthetic_waveform(3.0, seed=3)])
    batched = log_mel_spectrogram(batch, n_mels=80)
    assert batched.shape == (2, 80, 300)
    for row in range(2):
        torch.testing.assert_close(batched[row], log_mel_spectrogram(batch[row]), rtol=0, atol=1e-6)
    assert not torch.allclose(batched[0], batched[1])


def test_log_mel_rejects_bad_rank():
    with pytest.raises(ValueError, match=r"\(S,\) or \(B, S\)"):
        log_mel_spectrogram(torch.zeros(1, 2, 400))


def test_pad_or_trim_tensor_and_array():
    audio = torch.arange(10.0)
    assert pad_or_trim(audio, 4).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert pad_or_trim(audio, 12).tolist() == list(range(10)) + [0.0, 0.0]
    batch = np.ones((2, 5), dtype=np.float32)
    padded = pad_or_trim(batch, 7)
    assert isinstance(padded, np.ndarray) and padded.shape == (2, 7) and padded[:, 5:].sum() == 0


def test_load_audio_downmixes_and_resamples(tmp_path):
    rate = 8000
    t = np.arange(rate) / rate
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    stereo = np.stack([left, left], axis=1).astype(np.float32)
    path = tmp_path / "tone.wav"
    soundfile.write(path, stereo, rate, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == torch.float32 and audio.ndim == 1
    assert len(audio) == SAMPLE_RATE
    # A 300 Hz tone of amplitude 0.5 stays one after resampling (away from the edges).
    assert abs(audio[2000:-2000].abs().max().item() - 0.5) < 0.01


def test_load_audio_reads_file_objects(tmp_path):
    path = tmp_path / "a.flac"
    soundfile.write(path, synthetic_waveform(0.5).numpy(), SAMPLE_RATE)
    with open(path, "rb") as f:
        from_stream = load_audio(f)
    torch.testing.assert_close(from_stream, load_audio(path))


def test_load_audio_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(missing)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x01garbage" * 50)
    with pytest.raises(ValueError, match="corrupt.wav"):
        load_audio(corrupt)
