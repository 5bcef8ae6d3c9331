"""Synthesise the spoken digits of the AV-Digits demo and write the shipped asset.

The audio half of AV-Digits is "zero" ... "nine" spoken by espeak-ng in many
voices (English accent x voice variant), each at several speeds and pitches,
stored as quantised log-mel features (see distill_export.data.audio).

Reproduce:

    apt-get install espeak-ng
    python tools/make_demo_audio.py            # writes distill_export/data/assets/avdigits_audio.npz
    python tools/make_demo_audio.py --check    # regenerate in memory, compare with the shipped file
    python tools/make_demo_audio.py --out /tmp/a.npz

The output is deterministic for a given espeak-ng version (stored in the file).

npz keys:
    logmel        uint8 (n_clips, n_mels, n_frames)  dB = db_min + q / 255 * (db_max - db_min)
    db_min/db_max float32 scalars
    digit         int8  (n_clips,)
    voice         int16 (n_clips,)  index into voice_names
    voice_names   str   (n_voices,)  "accent+variant", the espeak-ng -v argument
    test_voices   bool  (n_voices,)  held-out voices for the test split
    espeak_version str scalar
    sample_rate, n_mels, n_fft, hop_length, n_frames  int32 scalars; f_min, f_max float32 scalars
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill_export.data.audio import DEMO_AUDIO_SPEC, FLOOR_DB, log_mel, read_wav, resample  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, one_line_errors  # noqa: E402

DEFAULT_OUT = ROOT / "distill_export" / "data" / "assets" / "avdigits_audio.npz"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# espeak-ng's own (non-mbrola) English voices: `espeak-ng --voices=en`.
ACCENTS = ["en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# Voice variants (`espeak-ng --voices=variant`, file names), male and female interleaved.
VARIANTS = ["m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "Andrea",
            "m7", "linda", "m8", "steph", "croak", "anika", "klatt", "Alicia", "klatt3",
            "belinda", "grandpa", "grandma"]
VARIANTS_PER_ACCENT = 6
SPEEDS = [110, 130, 150, 170, 190, 210]  # words per minute; one rendition each
PITCH_RANGE = (20, 80)  # espeak-ng -p, 0..99
SEED = 20240601


def voices() -> list[str]:
    """48 voices: accent a gets 6 consecutive variants (cyclic), so each variant has two accents."""
    out = []
    for a, accent in enumerate(ACCENTS):
        for j in range(VARIANTS_PER_ACCENT):
            out.append(f"{accent}+{VARIANTS[(a * VARIANTS_PER_ACCENT + j) % len(VARIANTS)]}")
    return out


def test_voice_mask(n_voices: int) -> np.ndarray:
    """Every 5th voice (20%): one or two per accent, ten different variants, both sexes."""
    return np.arange(n_voices) % 5 == 2


def renditions(voice_index: int) -> list[tuple[int, int]]:
    """(speed, pitch) pairs of one voice, fixed by the voice index."""
    rng = np.random.default_rng([SEED, voice_index])
    pitches = rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1, size=len(SPEEDS))
    return [(s, int(p)) for s, p in zip(SPEEDS, pitches)]


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/..." -> "1.51" (the path varies by machine)
    return out.split(":", 1)[1].split("Data at")[0].strip()


def check_voices_exist() -> None:
    """espeak-ng silently ignores an unknown accent or variant; refuse to build with one."""
    def files(arg: str) -> set[str]:
        out = subprocess.run(["espeak-ng", f"--voices={arg}"], capture_output=True, text=True, check=True).stdout
        return {line.split()[4].split("/")[-1] for line in out.splitlines()[1:] if len(line.split()) > 4}

    langs = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True, check=True).stdout
    missing = [a for a in ACCENTS if f" {a} " not in langs]
    missing += [f"+{v}" for v in sorted(set(VARIANTS) - files("variant"))]
    if missing:
        raise SystemExit(f"espeak-ng lacks voices {missing}: check `espeak-ng --voices=en` / `--voices=variant`")


def synth(job: tuple[str, int, int, int]) -> np.ndarray:
    """One clip -> log-mel dB (n_mels, n_frames) float32."""
    voice, speed, pitch, digit = job
    fd, tmp = tempfile.mkstemp(suffix=".wav")
    os.close(fd)
    try:
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", tmp, WORDS[digit]]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or res.stderr.strip():
            raise RuntimeError(f"espeak-ng failed for {cmd}: {res.stderr.strip()}")
        wave, sr = read_wav(tmp)
    finally:
        os.unlink(tmp)
    wave = resample(wave.astype(np.float64), sr, DEMO_AUDIO_SPEC["sample_rate"])
    return log_mel(wave, **DEMO_AUDIO_SPEC).numpy()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def build(workers: int) -> dict[str, np.ndarray]:
    check_voices_exist()
    names = voices()
    jobs, digit, voice = [], [], []
    for v, name in enumerate(names):
        for speed, pitch in renditions(v):
            for d in range(10):
                jobs.append((name, speed, pitch, d))
                digit.append(d)
                voice.append(v)
    with Pool(workers, initializer=_init_worker) as pool:
        feats = np.stack(pool.map(synth, jobs, chunksize=20))  # (N, n_mels, n_frames) dB
    silent = np.flatnonzero((feats > FLOOR_DB + 1.0).sum(axis=(1, 2)) == 0)
    if silent.size:
        raise RuntimeError(f"{silent.size} clips are silent, e.g. {jobs[silent[0]]}")

    db_min, db_max = np.float32(feats.min()), np.float32(feats.max())
    q = np.rint((feats - db_min) / (db_max - db_min) * 255.0)
    out = {
        "logmel": np.clip(q, 0, 255).astype(np.uint8),
        "db_min": db_min,
        "db_max": db_max,
        "digit": np.asarray(digit, dtype=np.int8),
        "voice": np.asarray(voice, dtype=np.int16),
        "voice_names": np.asarray(names, dtype=str),
        "test_voices": test_voice_mask(len(names)),
        "espeak_version": np.asarray(espeak_version(), dtype=str),
    }
    for k, v in DEMO_AUDIO_SPEC.items():
        out[k] = np.asarray(v, dtype=np.float32 if isinstance(v, float) else np.int32)
    return out


def write(arrays: dict[str, np.ndarray], path: Path) -> None:
    """np.savez_compressed to a temp file next to `path`, then os.replace: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give it a normal file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check(arrays: dict[str, np.ndarray], path: Path) -> int:
    if not path.exists():
        print(f"check failed: {path} does not exist; run tools/make_demo_audio.py", file=sys.stderr)
        return 1
    with np.load(path) as f:
        shipped = {k: f[k] for k in f.files}
    problems = []
    for k in sorted(set(arrays) | set(shipped)):
        if k not in shipped or k not in arrays:
            problems.append(f"key {k!r} only in {'regenerated' if k in arrays else 'shipped'} arrays")
        elif arrays[k].dtype != shipped[k].dtype or arrays[k].shape != shipped[k].shape:
            problems.append(f"{k}: {shipped[k].dtype}{shipped[k].shape} shipped vs "
                            f"{arrays[k].dtype}{arrays[k].shape} regenerated")
        elif not np.array_equal(arrays[k], shipped[k]):
            n = int(np.sum(arrays[k] != shipped[k]))
            extra = ""
            if arrays[k].dtype == np.uint8:
                extra = f", max |diff| {np.abs(arrays[k].astype(int) - shipped[k].astype(int)).max()} levels"
            problems.append(f"{k}: {n} of {arrays[k].size} values differ{extra}")
    if problems:
        print(f"check failed: {path} does not match a fresh build "
              f"(espeak-ng {arrays['espeak_version']} here, {shipped.get('espeak_version', '?')} shipped):",
              file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"check passed: {path} matches a fresh build ({len(arrays['digit'])} clips)")
    return 0


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write (or, with --check, what to compare)")
    ap.add_argument("--check", action="store_true", help="regenerate in memory and compare with --out; write nothing")
    ap.add_argument("--workers", type=at_least(1), default=min(4, os.cpu_count() or 1), help="synthesis processes")
    args = ap.parse_args(argv)
    if not args.check:  # a new file (the shipped asset too: delete it first to rebuild it), before any work
        from distill_export.output_paths import check_tool_output

        check_tool_output(args.out, folder=False)
    elif not args.out.is_file() or not zipfile.is_zipfile(args.out):  # before minutes of synthesis (59th audit B12)
        print(f"error: --out {args.out} {'is not an .npz archive' if args.out.is_file() else 'does not exist'}: "
              "nothing to --check against", file=sys.stderr)
        return 2
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng not found on PATH: apt-get install espeak-ng", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    arrays = build(args.workers)
    dt = time.perf_counter() - t0
    n, nv = len(arrays["digit"]), len(arrays["voice_names"])
    print(f"built {n} clips, {nv} voices ({int(arrays['test_voices'].sum())} held out), "
          f"espeak-ng {arrays['espeak_version']}, in {dt:.1f} s with {args.workers} workers")
    if args.check:
        return check(arrays, args.out)
    write(arrays, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
