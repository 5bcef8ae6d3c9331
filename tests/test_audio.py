"""Audio front end (distill_export/data/audio.py) and the shipped AV-Digits audio asset."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from distill_export.data.audio import (
    DEMO_AUDIO_SPEC,
    FLOOR_DB,
    log_mel,
    mel_filterbank,
    read_wav,
    resample,
)
from distill_export.data.demo_audio import ASSET, add_noise_db, load_demo_audio
from distill_export.errors import DataError

SR = DEMO_AUDIO_SPEC["sample_rate"]


def _write_wav(path, frames: np.ndarray, width: int, channels: int, sr: int = SR) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(sr)
        f.writeframes(frames.tobytes())


def _tone(freq: float, seconds: float = 0.5, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- log_mel / mel_filterbank -------------------------------------------------

def test_log_mel_shape_for_short_and_long_waves():
    spec = DEMO_AUDIO_SPEC
    for seconds in (0.01, 0.3, 3.0):
        out = log_mel(_tone(440, seconds), **spec)
        assert out.shape == (spec["n_mels"], spec["n_frames"])
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
    # numpy and torch input agree
    x = _tone(440)
    torch.testing.assert_close(log_mel(x, **spec), log_mel(torch.from_numpy(x), **spec))


def test_log_mel_pure_tone_lands_in_its_mel_band():
    spec = DEMO_AUDIO_SPEC
    fb = mel_filterbank(spec["n_fft"], spec["n_mels"], SR, spec["f_min"], spec["f_max"])
    assert fb.shape == (spec["n_mels"], spec["n_fft"] // 2 + 1)
    for freq in (300.0, 1000.0, 2500.0):
        out = log_mel(_tone(freq, seconds=1.0), **spec)  # longer than the window: no padding
        bin_ = round(freq * spec["n_fft"] / SR)
        expected = int(fb[:, bin_].argmax())
        assert abs(int(out.mean(dim=1).argmax()) - expected) <= 1, freq
        # far bands are near the floor; the peak band is ~0 dB after peak normalisation
        assert out.mean(dim=1).max() > -10.0
        assert out.mean(dim=1)[(torch.arange(spec["n_mels"]) - expected).abs() > 4].max() < -40.0


def test_log_mel_trims_silence_and_pads_with_floor():
    # 0.2 s tone surrounded by 1 s of silence each side: trimmed, centred, padded with the floor
    x = np.concatenate([np.zeros(SR), _tone(1000, 0.2), np.zeros(SR)])
    out = log_mel(x, **DEMO_AUDIO_SPEC)
    loud = torch.nonzero(out.max(dim=0).values > FLOOR_DB + 1).flatten()
    assert 6 <= loud.numel() <= 12  # 0.2 s / 25 ms hop ~ 8 frames (+ window edges)
    centre = (int(loud[0]) + int(loud[-1])) / 2
    assert abs(centre - DEMO_AUDIO_SPEC["n_frames"] / 2) <= 1.5
    assert out[:, 0].eq(FLOOR_DB).all() and out[:, -1].eq(FLOOR_DB).all()


def test_log_mel_all_silence_is_floor():
    out = log_mel(np.zeros(SR, dtype=np.float32), **DEMO_AUDIO_SPEC)
    assert torch.allclose(out, torch.full_like(out, FLOOR_DB))


# --- read_wav / resample ------------------------------------------------------

def test_read_wav_16bit_round_trip(tmp_path):
    x = _tone(440)
    pcm = np.round(x * 32767).astype("<i2")
    _write_wav(tmp_path / "a.wav", pcm, width=2, channels=1)
    y, sr = read_wav(tmp_path / "a.wav")
    assert sr == SR and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1.0 / 32768 + 1e-6)


def test_read_wav_8bit_round_trip(tmp_path):
    x = _tone(440)
    pcm = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8)  # 8-bit WAV is unsigned
    _write_wav(tmp_path / "a.wav", pcm, width=1, channels=1, sr=11025)
    y, sr = read_wav(tmp_path / "a.wav")
    assert sr == 11025 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1.0 / 128 + 1e-6)


def test_read_wav_stereo_and_32bit_become_mono(tmp_path):
    left, right = _tone(440, amp=0.5), _tone(440, amp=0.1)
    pcm = np.round(np.stack([left, right], axis=1) * 2**31 * 0.999).astype("<i4")  # (T, 2) interleaved
    _write_wav(tmp_path / "s.wav", pcm, width=4, channels=2)
    y, sr = read_wav(tmp_path / "s.wav")
    assert y.ndim == 1 and y.shape == left.shape
    np.testing.assert_allclose(y, (left + right) / 2 * 0.999, atol=1e-6)


def test_read_wav_corrupt_or_missing_raises_data_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file")
    with pytest.raises(DataError, match="bad.wav"):
        read_wav(bad)
    with pytest.raises(DataError, match="missing.wav"):
        read_wav(tmp_path / "missing.wav")
    truncated = tmp_path / "trunc.wav"
    _write_wav(truncated, np.zeros(0, dtype="<i2"), width=2, channels=1)
    with pytest.raises(DataError, match="trunc.wav"):
        read_wav(truncated)


def test_resample_length_and_content():
    x = _tone(440, seconds=1.0)
    y = resample(x, SR, 22050)
    assert len(y) == 22050
    z = resample(y, 22050, SR)
    assert len(z) == SR
    np.testing.assert_allclose(z[200:-200], x[200:-200], atol=1e-2)
    assert len(resample(x, SR, SR)) == SR


# --- shipped asset ------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    return load_demo_audio()


def test_asset_is_small():
    assert ASSET.stat().st_size <= 5 * 1024 * 1024


def test_asset_loads_with_all_digits_in_both_splits(demo):
    n = len(demo.digit)
    assert demo.logmel.shape == (n, DEMO_AUDIO_SPEC["n_mels"], DEMO_AUDIO_SPEC["n_frames"])
    assert demo.logmel.dtype == torch.float32
    assert demo.logmel.min() >= FLOOR_DB - 1e-3 and demo.logmel.max() <= 10.0
    assert n >= 2000 and len(demo.voice_names) >= 40
    test = demo.is_test()
    for split in (test, ~test):
        assert set(demo.digit[split].tolist()) == set(range(10))
    # held-out voices never appear in train, and are roughly 20% of voices
    train_v, test_v = set(demo.voice[~test].tolist()), set(demo.voice[test].tolist())
    assert train_v.isdisjoint(test_v)
    assert test_v == set(torch.nonzero(demo.test_voices).flatten().tolist())
    assert 0.1 <= demo.test_voices.float().mean() <= 0.3
    # every voice says every digit equally often
    counts = torch.bincount(demo.voice * 10 + demo.digit, minlength=len(demo.voice_names) * 10)
    assert counts.min() == counts.max() > 0


# --- add_noise_db ---------------------------------------------------------------

def test_add_noise_db_hits_snr_and_is_deterministic(demo):
    clean = demo.logmel[:64]

    def noisy(seed, snr):
        return add_noise_db(clean, snr, torch.Generator().manual_seed(seed))

    a, b, c = noisy(0, 0.0), noisy(0, 0.0), noisy(1, 0.0)
    assert a.shape == clean.shape and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert not torch.allclose(a, clean, atol=1.0)
    # measured SNR in the power domain equals the request, per clip
    for snr in (10.0, 0.0, -5.0):
        y = noisy(0, snr)
        sig = 10 ** (clean / 10)
        noise = 10 ** (y / 10) - sig
        measured = 10 * torch.log10(sig.mean(dim=(1, 2)) / noise.mean(dim=(1, 2)))
        torch.testing.assert_close(measured, torch.full_like(measured, snr), atol=0.05, rtol=0)
    # lower SNR -> louder noise floor; per-clip SNR tensors broadcast
    assert noisy(0, -5.0).mean() > noisy(0, 10.0).mean()
    per_clip = add_noise_db(clean, torch.linspace(-5, 20, 64), torch.Generator().manual_seed(0))
    assert per_clip.shape == clean.shape
    # the floor (silence) is raised by noise
    assert (a > FLOOR_DB + 1).float().mean() > (clean > FLOOR_DB + 1).float().mean()
