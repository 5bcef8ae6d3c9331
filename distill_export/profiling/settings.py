"""What to measure: a hardware preset (or threads and batches by hand), the backends,
and the timing budget. Built from ProfileConfig (the `run` pipeline) or from flags."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field

from distill_export.config_checks import plain_number
from distill_export.device import all_threads
from distill_export.errors import BackendUnavailable, ConfigError
from distill_export.profiling.measure import Sweep
from distill_export.runtimes.base import Backend, unavailable
from distill_export.runtimes.base import backends as known_backends
from distill_export.runtimes.pytorch import cuda_missing

STANDALONE_BATCHES = [1, 8, 32, 128]  # `distill-export profile`; `run` keeps ProfileConfig's quicker [1, 32]
STANDALONE_THREADS = [1, 2, 4, 0]  # 0 = every core
MAX_SECONDS = 3600.0  # per model and cell: warm-up, min time
MAX_ITERS = 10_000_000
MAX_CALL_S = 86400.0  # profile.max_call_s
MAX_BATCH = 1_000_000
CPU_DEFAULT = ["torch-cpu", "ort-cpu", "ov-cpu", "tensorrt"]  # tensorrt only ever meets .engine files
GPU_DEFAULT = ["torch-cuda", "torch-cuda-fp16", "torch-cuda-graphs", "ort-cuda", "ort-trt", "tensorrt"]


@dataclass(frozen=True)
class Preset:
    name: str
    help: str
    threads: tuple[int, ...]
    backends: tuple[str, ...]


PRESETS = {
    p.name: p
    for p in [
        Preset("cpu-1t", "one CPU thread, like a small ARM core", (1,), tuple(CPU_DEFAULT)),
        Preset("cpu-4t", "four CPU threads, like a quad-core edge board", (4,), tuple(CPU_DEFAULT)),
        Preset("gpu", "the CUDA GPU: PyTorch fp32/fp16 and CUDA graphs, ONNX Runtime CUDA and "
               "TensorRT EPs, TensorRT engines", (0,), tuple(GPU_DEFAULT)),
    ]
}


@dataclass
class ProfileSettings:
    sweep: Sweep
    backends: list[str]  # backend names (runtimes.base.backends())
    explicit: bool = False  # backends named by the user: an unavailable one is an error
    preset: str | None = None
    input_shape: tuple[int, ...] | None = None  # per sample, for targets that do not say
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"preset": self.preset, "backends": self.backends, **asdict(self.sweep),
                "input_shape": list(self.input_shape) if self.input_shape else None}


def resolve_threads(requested: list[int], cores: int | None = None) -> tuple[list[int], list[str]]:
    """0 means every core; counts above the core count are capped (with a note); deduped, sorted."""
    cores = cores or all_threads()
    notes, out = [], []
    for t in requested:
        if t < 0:
            raise ConfigError(f"threads must be >= 0 (0 = all cores), got {t}")
        n = cores if t == 0 else t
        if n > cores:
            notes.append(f"{t} threads asked for, this machine has {cores} cores: measured with {cores}")
            n = cores
        out.append(n)
    return sorted(set(out)), notes


def _positive(name: str, values: list[int]) -> list[int]:
    if not values or any(v < 1 or v > MAX_BATCH for v in values):
        raise ConfigError(f"{name} must be integers in [1, {MAX_BATCH}], got {str(values)[:80]}")
    return list(dict.fromkeys(values))


def parse_ints(spec: str | list[int] | None, what: str, distinct: bool = False) -> list[int] | None:
    """Comma-separated integers; distinct: a list of settings to measure, where one named twice ran once."""
    if spec is None:
        return None
    if isinstance(spec, list):
        return spec
    items = spec.split(",")
    if any(not v.strip() for v in items):  # "1,,2" or "1,": an empty item is a typo, not a skip
        raise ConfigError(f"{what}: expected comma-separated integers, got {spec!r} (an empty item)")
    try:
        values = [plain_number(v, int) for v in items]  # int("1_0") is 10, int("١") is 1 (tenth audit n2)
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers (ASCII digits, no '_'), got {spec!r}") from None
    if distinct and (twice := [v for i, v in enumerate(values) if v in values[:i]]):  # "1,1" ran once (75th A1)
        raise ConfigError(f"{what}: {twice[0]} is named twice in {spec!r}; each is measured once")
    return values


def make_settings(
    config,  # ProfileConfig: warm-up and time budget, and the sweep when no flag overrides it
    *,
    preset: str | None = None,
    batches: list[int] | None = None,
    threads: list[int] | None = None,
    backends: str | list[str] | None = None,
    device: str = "auto",
    standalone: bool = False,
    input_shape: tuple[int, ...] | None = None,
) -> ProfileSettings:
    """Flags beat the preset, the preset beats the config. `device` (auto|cpu|cuda) picks the
    default backends when neither a preset nor --backend does."""
    if preset is not None and preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown target preset {preset!r} ({hint}choices: {', '.join(PRESETS)})")
    p = PRESETS.get(preset) if preset else None
    threads_given = threads is not None
    if batches is None:
        batches = STANDALONE_BATCHES if standalone else list(config.batches)
    if threads is None:
        threads = list(p.threads) if p else (STANDALONE_THREADS if standalone else list(config.threads))
    resolved_threads, notes = resolve_threads(_nonempty(threads))
    if p is not None and threads_given and list(threads) != list(p.threads):  # 70th audit A3: unsaid
        notes.insert(0, f"--threads {','.join(map(str, threads))} replaces the {p.name} preset's threads "
                        f"({','.join(map(str, p.threads))})")

    explicit = backends is not None
    if explicit:
        names = parse_backends(backends)
        for n in names:
            require(known_backends()[n])
    elif p is not None:
        names = list(p.backends)
        if p.name == "gpu":
            _require_some_gpu(names)
    else:
        names = _auto_backends(device)
    sweep = Sweep(
        batches=_positive("batch sizes", list(batches)), threads=resolved_threads,
        warmup_s=float(config.warmup_s), min_time_s=float(config.min_time_s), min_iters=int(config.min_iters),
        max_call_s=float(config.max_call_s),
    )
    if not 0 < sweep.max_call_s <= MAX_CALL_S:
        raise ConfigError(f"profile max call time (--max-call-s) must be in (0, {MAX_CALL_S}] seconds, "
                          f"got {sweep.max_call_s}")
    for name, value in (("warm-up (--warmup)", sweep.warmup_s), ("min time (--min-time)", sweep.min_time_s)):
        if not 0 <= value <= MAX_SECONDS:  # also false for NaN; inf would time forever
            raise ConfigError(f"profile {name} must be in [0, {MAX_SECONDS}] seconds, got {value}")
    if not 1 <= sweep.min_iters <= MAX_ITERS:
        raise ConfigError(f"profile min iterations (--min-iters) must be in [1, {MAX_ITERS}], got {sweep.min_iters}")
    return ProfileSettings(sweep, names, explicit, preset, tuple(input_shape) if input_shape else None, notes)


def _nonempty(values: list[int]) -> list[int]:
    if not values:
        raise ConfigError("threads: give at least one thread count")
    return list(values)


def _auto_backends(device: str) -> list[str]:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return list(CPU_DEFAULT)
    if device == "cuda":
        _require_some_gpu(GPU_DEFAULT)
        return list(dict.fromkeys(CPU_DEFAULT + GPU_DEFAULT))
    # auto: the edge CPU story always; the GPU backends too when PyTorch sees a GPU
    return list(dict.fromkeys(CPU_DEFAULT + GPU_DEFAULT)) if not cuda_missing() else list(CPU_DEFAULT)


def _require_some_gpu(names: list[str]) -> None:
    """A GPU asked for where no GPU backend can run is an error, not a page of skipped rows."""
    if any(unavailable(known_backends()[n]) is None for n in names):
        return
    raise BackendUnavailable(
        "a GPU target was asked for but no GPU backend can run here: PyTorch sees no CUDA GPU, ONNX Runtime "
        "has no CUDA or TensorRT execution provider and TensorRT is not installed; on an NVIDIA machine "
        "install a CUDA build of torch, onnxruntime-gpu or tensorrt (see `--backend` to pick one)")


def parse_backends(spec: str | list[str]) -> list[str]:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    if any(not str(n).strip() for n in names):  # "" was "nothing to profile yet"; "ort-cpu," dropped an item (70th B3, A1)
        raise ConfigError(f"--backend: expected comma-separated backend names, got {spec!r} (an empty item)")
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    known = known_backends()
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, list(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown backend {n!r} ({hint}choices: {', '.join(known)})")
    return names


def require(backend: Backend) -> None:
    reason = unavailable(backend)
    if reason:
        raise BackendUnavailable(f"backend {backend.name} was asked for but cannot run: {reason}")

