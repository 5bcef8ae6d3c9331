"""Audio half of the AV-Digits demo: the shipped spoken-digit log-mels, and noise to mix in.

The asset is built once by tools/make_demo_audio.py (espeak-ng); see that
file for the npz layout. Features match `log_mel(wave, **DEMO_AUDIO_SPEC)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill_export.data.audio import DEMO_AUDIO_SPEC, EPS, FLOOR_DB
from distill_export.errors import DataError
from distill_export.files import npz_failure

ASSET = Path(__file__).resolve().parent / "assets" / "avdigits_audio.npz"


@dataclass(frozen=True)
class DemoAudio:
    logmel: torch.Tensor  # (N, n_mels, n_frames) float32, dB
    digit: torch.Tensor  # (N,) int64 label 0..9
    voice: torch.Tensor  # (N,) int64 index into voice_names
    voice_names: list[str]  # (V,) espeak-ng voice, "accent+variant"
    test_voices: torch.Tensor  # (V,) bool: voice held out for the test split
    espeak_version: str

    def is_test(self) -> torch.Tensor:
        """(N,) bool: clip spoken by a held-out voice."""
        return self.test_voices[self.voice]


def load_demo_audio(path: str | Path | None = None) -> DemoAudio:
    """Load and dequantise the shipped spoken-digit features."""
    path = Path(path) if path is not None else ASSET
    try:
        with np.load(path, allow_pickle=False) as f:
            a = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"demo audio asset missing: {path} (run tools/make_demo_audio.py)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"demo audio asset unreadable: {path}: {npz_failure(e)}") from None
    for k, v in DEMO_AUDIO_SPEC.items():
        if k in a and not np.isclose(a[k], v):
            raise DataError(f"demo audio asset {path} was built with {k}={a[k]}, code expects {v}; "
                            "rebuild it with tools/make_demo_audio.py")
    lo, hi = float(a["db_min"]), float(a["db_max"])
    logmel = torch.from_numpy(a["logmel"]).float() * ((hi - lo) / 255.0) + lo  # (N, M, T) dB
    return DemoAudio(
        logmel=logmel,
        digit=torch.from_numpy(a["digit"].astype(np.int64)),
        voice=torch.from_numpy(a["voice"].astype(np.int64)),
        voice_names=[str(s) for s in a["voice_names"]],
        test_voices=torch.from_numpy(a["test_voices"].astype(bool)),
        espeak_version=str(a["espeak_version"]),
    )


def add_noise_db(
    logmel_db: torch.Tensor,
    snr_db: float | torch.Tensor,
    generator: torch.Generator,
    frame_jitter_db: float = 3.0,
    bin_jitter_db: float = 2.0,
) -> torch.Tensor:
    """Mix noise into log-mel features in the power domain, at a given SNR.

    logmel_db: (..., n_mels, n_frames) dB; snr_db: scalar or one per clip (...,).
    Noise has a random spectral tilt per clip between white (0) and pink-ish (1,
    power ~ 1/(mel band + 1)), a random log-normal gain per frame (`frame_jitter_db`)
    and per bin (`bin_jitter_db`), and is scaled so that its mean power over the
    clip is the clip's mean signal power / 10^(snr/10). Deterministic given
    `generator` (whose device is used to draw; the result is on logmel_db's device).
    """
    x = logmel_db.float()
    *lead, n_mels, n_frames = x.shape
    gdev = generator.device
    snr = torch.as_tensor(snr_db, dtype=torch.float32).to(x.device)
    snr = snr.reshape(*snr.shape, 1, 1)  # () or (...,) -> broadcastable to (..., 1, 1)

    def randn(*shape):  # draw on the generator's device, move to x's
        return torch.randn(*shape, generator=generator, device=gdev).to(x.device)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=gdev).to(x.device)

    signal = (10.0 ** (x / 10.0) - EPS).clamp_min(0.0)  # (..., M, T) power
    tilt = rand(*lead, 1, 1)  # (..., 1, 1) 0 = white, 1 = pink-ish
    bands = torch.arange(1, n_mels + 1, dtype=torch.float32, device=x.device).reshape(n_mels, 1)  # (M, 1)
    shape = bands.pow(-tilt)  # (..., M, 1)
    db_to_ln = np.log(10.0) / 10.0  # power gain in dB -> natural log
    frame_gain = torch.exp(frame_jitter_db * db_to_ln * randn(*lead, 1, n_frames))  # (..., 1, T)
    bin_gain = torch.exp(bin_jitter_db * db_to_ln * randn(*lead, n_mels, n_frames))  # (..., M, T)
    noise = shape * frame_gain * bin_gain  # (..., M, T)
    target = signal.mean(dim=(-2, -1), keepdim=True) / 10.0 ** (snr / 10.0)  # (..., 1, 1)
    noise = noise * (target / noise.mean(dim=(-2, -1), keepdim=True))
    out = 10.0 * torch.log10(signal + noise + EPS)
    return out.clamp_min(FLOOR_DB)
