"""Audio front end: WAV reading, resampling and fixed-size log-mel features.

Pure numpy/torch/stdlib (scipy only for resampling), so the same code turns the
shipped demo clips and a user's WAV files into identical features. Every
feature in the project is made by `log_mel(wave, **DEMO_AUDIO_SPEC)`.
"""

from __future__ import annotations

import math
import re
import struct
import sys
import wave as _wave
from pathlib import Path

import numpy as np
import torch

from distill_export.errors import DataError

# One spec, used by tools/make_demo_audio.py to build the shipped asset and at
# run time for user WAVs. hop 200 @ 8 kHz = 25 ms, so 32 frames span 0.8 s:
# a typical 0.6-0.9 s spoken digit fills the window.
DEMO_AUDIO_SPEC: dict = {
    "sample_rate": 8000,
    "n_mels": 32,
    "n_fft": 256,
    "hop_length": 200,
    "n_frames": 32,
    "f_min": 20.0,
    "f_max": 4000.0,
}

# What a WAV header may claim: rates outside this are a corrupt or hostile header (1 Hz would
# resample to 8000x its length), and a longer clip than MAX_AUDIO_SECONDS is refused before its
# samples are read (config data.max_audio_seconds where the config has it).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_AUDIO_SECONDS = 60.0
# Compressed WAV codecs (the header's format tag) the stdlib wave module cannot decode: named in
# the refusal with how to convert, not as the module's "unknown format: 6".
COMPRESSED_WAV = {
    2: "Microsoft ADPCM (WAVE_FORMAT_ADPCM)",
    6: "A-law (WAVE_FORMAT_ALAW)",
    7: "mu-law (WAVE_FORMAT_MULAW)",
    17: "IMA ADPCM (WAVE_FORMAT_IMA_ADPCM)",
    49: "GSM 6.10 (WAVE_FORMAT_GSM610)",
    80: "MPEG audio (WAVE_FORMAT_MPEG)",
    85: "MP3 (WAVE_FORMAT_MPEGLAYER3)",
}

# Power floor: 10*log10(EPS) = -100 dB is the value of silence and of padding.
EPS = 1e-10
FLOOR_DB = 10.0 * math.log10(EPS)
# Frames more than TRIM_DB below the loudest frame count as silence when trimming.
TRIM_DB = 40.0


def _check_header(path: Path, n_ch: int, width: int, sr: int, n: int, max_seconds: float,
                  present: int | None = None) -> None:
    """Refuse absurd header values before any sample is read. present: the bytes the file holds
    after the data chunk's start (None: unknown); a header claiming more is corrupt, not long."""
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise DataError(f"WAV file {path}: sample rate {sr} Hz is outside {MIN_SAMPLE_RATE // 1000} kHz-"
                        f"{MAX_SAMPLE_RATE // 1000} kHz (a corrupt header?)")
    if not 1 <= n_ch <= 64:
        raise DataError(f"WAV file {path}: {n_ch} channels (1-64 supported; a corrupt header?)")
    claimed = n * n_ch * width
    if present is not None and claimed > present:
        raise DataError(f"WAV file {path} is corrupt or truncated: its header claims {claimed} bytes of audio "
                        f"({n / sr:.1f} s), the file holds {max(present, 0)} after the header")
    if n / sr > max_seconds:
        raise DataError(f"WAV file {path}: the clip is {n / sr:.1f} s long, more than the {max_seconds:g} s "
                        "limit (data.max_audio_seconds); cut it or raise the limit")


def _bytes_after_data_start(f, path: Path) -> int | None:
    """The file's bytes from the data chunk's first sample on (the stdlib reader's chunk offset;
    None where this Python's wave module does not expose it)."""
    chunk, start = getattr(f, "_data_chunk", None), 0
    if not isinstance(getattr(chunk, "offset", None), int):
        return None
    while isinstance(getattr(chunk, "offset", None), int):  # offsets are relative to the enclosing chunk
        start += chunk.offset
        chunk = getattr(chunk, "file", None)
    return path.stat().st_size - start


def _pcm24(raw: bytes) -> np.ndarray:
    """24-bit little-endian signed samples -> float32 in [-1, 1): each 3 bytes become the top
    three bytes of an int32 (an arithmetic shift back keeps the sign), then / 2**23."""
    b = np.frombuffer(raw[: len(raw) // 3 * 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    value = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)  # sign bit in the int32's top bit
    return ((value >> 8).astype(np.float64) / 8388608.0).astype(np.float32)


def read_wav(path: str | Path, max_seconds: float = MAX_AUDIO_SECONDS) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file; return (mono float32 wave in [-1, 1], sample rate). Sample rates
    outside 1-384 kHz and clips longer than max_seconds are refused (DataError)."""
    path = Path(path)
    try:
        with _wave.open(str(path), "rb") as f:
            n_ch, width, sr, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            _check_header(path, n_ch, width, sr, n, max_seconds, _bytes_after_data_start(f, path))
            # A header may understate the length: read no more than the limit allows.
            raw = f.readframes(min(n, int(max_seconds * sr) + 1))
    except FileNotFoundError:
        raise DataError(f"audio file not found: {path}") from None
    except (RuntimeError, struct.error):
        # twentieth audit B1: the stdlib chunk reader raises a bare RuntimeError when a chunk's size
        # runs past the RIFF data (an odd-sized chunk without its pad byte misaligns the next header);
        # struct.error is its other raw way out on a short header in some Python versions.
        raise DataError(f"cannot read WAV file {path}: a chunk's size runs past the end of the RIFF data (a corrupt "
                        "header, e.g. an odd-sized chunk without its pad byte)") from None
    except (_wave.Error, EOFError, OSError) as e:
        if "unknown format: 3" == str(e).strip():  # WAVE_FORMAT_IEEE_FLOAT: the stdlib reads integer PCM only
            raise DataError(f"cannot read WAV file {path}: its samples are 32/64-bit float (WAVE_FORMAT_IEEE_FLOAT), "
                            "and only integer PCM WAV is read; save it as PCM, e.g. ffmpeg -i IN -c:a pcm_s16le "
                            "OUT.wav") from None
        if "unknown format: 65534" in str(e):  # this Python's wave module predates WAVE_FORMAT_EXTENSIBLE (3.12)
            raise DataError(f"cannot read WAV file {path}: it is WAVE_FORMAT_EXTENSIBLE, which Python "
                            f"{sys.version_info.major}.{sys.version_info.minor}'s wave module does not read (3.12+ "
                            "reads its PCM kind); save it as plain PCM, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav") from None
        codec = re.fullmatch(r"unknown format: (\d+)", str(e).strip())
        if codec:  # sixth audit DW_alaw/DW_mulaw/DW_adpcm: the codec named, and how to convert
            tag = int(codec.group(1))
            raise DataError(f"cannot read WAV file {path}: its samples are "
                            f"{COMPRESSED_WAV.get(tag, 'not integer PCM')}, format tag {tag}, and only integer PCM "
                            "WAV (format tag 1) is read; save it as PCM, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav") from None
        reason = str(e)[:120] or ("the file ends inside its header" if isinstance(e, EOFError) else type(e).__name__)
        raise DataError(f"cannot read WAV file {path}: {reason}") from None
    if n_ch < 1 or sr <= 0:
        raise DataError(f"cannot read WAV file {path}: {n_ch} channels at {sr} Hz")
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:  # seventh audit DW_pcm24: common studio PCM, was refused
        x = _pcm24(raw)
    elif width == 4:
        x = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:
        raise DataError(f"cannot read WAV file {path}: unsupported sample width {8 * width} bits (8, 16, 24 and "
                        "32-bit integer PCM are read); save it as such, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav")
    usable = (len(x) // n_ch) * n_ch
    if usable == 0:
        raise DataError(f"cannot read WAV file {path}: no audio samples")
    x = x[:usable].reshape(-1, n_ch).mean(axis=1)  # (T,) stereo -> mono
    return np.ascontiguousarray(x, dtype=np.float32), sr


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Polyphase resampling of a 1-D wave; output length = ceil(len * new_sr / orig_sr)."""
    wave = np.asarray(wave)
    if orig_sr == new_sr:
        return wave.copy()
    from scipy.signal import resample_poly  # scipy comes with scikit-learn

    g = math.gcd(int(orig_sr), int(new_sr))
    return resample_poly(wave, int(new_sr) // g, int(orig_sr) // g).astype(wave.dtype, copy=False)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, peak 1 (no area norm): (n_mels, n_fft//2+1)."""
    f_max = sample_rate / 2.0 if f_max is None else f_max
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)  # (F,)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))  # (M+2,)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1) each
    up = (fft_hz[None, :] - lo) / (mid - lo)
    down = (hi - fft_hz[None, :]) / (hi - mid)
    return torch.from_numpy(np.maximum(0.0, np.minimum(up, down))).float()  # (M, F)


def log_mel(
    wave: torch.Tensor | np.ndarray,
    sample_rate: int = 8000,
    n_mels: int = 32,
    n_fft: int = 256,
    hop_length: int = 200,
    n_frames: int = 32,
    f_min: float = 20.0,
    f_max: float = 4000.0,
    normalize: bool = True,
) -> torch.Tensor:
    """Fixed-size log-mel spectrogram in dB of one mono wave (T,) -> (n_mels, n_frames) float32.

    Power is scaled so a full-scale sine reads about 0 dB; silence is FLOOR_DB.
    `normalize` scales the wave to peak 1 first, so loudness does not matter.
    Leading/trailing frames more than TRIM_DB below the loudest frame are
    trimmed; the rest is centre-cropped, or centred and padded with FLOOR_DB.
    Computed in float64 so features do not depend on FFT rounding.
    """
    x = torch.as_tensor(np.asarray(wave) if not torch.is_tensor(wave) else wave).detach().cpu().double()
    if x.ndim != 1:
        raise DataError(f"log_mel expects a mono wave of shape (T,), got {tuple(x.shape)}")
    if normalize:
        peak = x.abs().max() if x.numel() else torch.tensor(0.0, dtype=x.dtype)
        if peak > 0:
            x = x / peak
    if x.numel() < n_fft:  # (T,) -> (>= n_fft,)
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=window, center=True,
                      pad_mode="constant", return_complex=True)  # (F, L)
    power = spec.abs().pow(2) / (window.sum() ** 2 / 4.0)  # (F, L); full-scale sine -> ~1 at its bin
    fb = mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max).double()  # (M, F)
    mel = fb @ power  # (M, L)
    db = 10.0 * torch.log10(mel + EPS)  # (M, L)

    # Trim silence by frame energy.
    frame_db = 10.0 * torch.log10(mel.sum(dim=0) + EPS)  # (L,)
    loud = torch.nonzero(frame_db > frame_db.max() - TRIM_DB).flatten()
    if loud.numel():
        db = db[:, int(loud[0]) : int(loud[-1]) + 1]  # (M, L')

    # Centre-crop or centre-pad to exactly n_frames.
    length = db.shape[1]
    if length >= n_frames:
        start = (length - n_frames) // 2
        db = db[:, start : start + n_frames]
    else:
        left = (n_frames - length) // 2
        db = torch.nn.functional.pad(db, (left, n_frames - length - left), value=FLOOR_DB)
    return db.float()  # (n_mels, n_frames)
