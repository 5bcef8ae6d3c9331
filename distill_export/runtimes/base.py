"""The runtime registry: ``@register_runtime`` classes, looked up by name (report.json's
``exports[...]["runtime"]``) or by profiling backend (``--backend``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from distill_export.errors import ConfigError
from distill_export.registry import import_members

Runner = Callable[["object", int], "object"]  # (x: (N, *shape) float32 numpy, batch_size) -> logits (N, C)


@dataclass(frozen=True)
class Backend:
    """One way a runtime runs in the profiler (what --backend takes)."""

    name: str  # what --backend takes
    runs: str  # the artifact kind it runs: "torch" (checkpoints), "onnx" or "engine"
    device: str  # cpu | cuda
    label: str  # the "backend" column of a latency row
    help: str
    options: dict = field(default_factory=dict)
    runtime: str = ""  # the registry name of the runtime it belongs to (set by register_runtime)


@dataclass
class Timer:
    """What the profiler times: make(batch, threads) returns a zero-argument callable that runs
    one inference and returns when it is done (it may raise BackendUnavailable for a cell it
    cannot run); on CUDA, the peak memory since the last reset, when the runtime knows it."""

    make: Callable[[int, int], Callable[[], object]]
    gpu_memory: Callable[[], float | None] | None = None
    reset_gpu_memory: Callable[[], None] | None = None


class Runtime:
    """A runtime. Subclasses set ``runs`` and ``backends`` and implement what they support."""

    name: str = ""  # set by register_runtime
    runs: str = ""  # the artifact kind: "onnx", "engine" or "torch"
    backends: tuple[Backend, ...] = ()  # its profiling backends, in listing order
    also_runs: tuple[str, ...] = ()  # runtimes whose artifacts it can check too (OpenVINO: ONNX Runtime's)

    def missing(self, backend: Backend | None = None) -> str | None:
        """Why it (or one of its backends) cannot run on this machine, or None when it can."""
        return None

    def runner(self, path: str, threads: int, sample_shape: tuple[int, ...] | None,
               check_facts: Callable[[dict], None]) -> Runner:
        """validate's entry point: a loaded artifact as (x, batch_size) -> logits. With
        sample_shape, the artifact's input is checked against one row of the run's data;
        check_facts gets the metadata the artifact carries about itself, before it runs."""
        raise ConfigError(f"runtime {self.name} does not run exported artifacts")

    def timer(self, source, backend: Backend, sample, model: str) -> Timer:
        """The profiler's entry point. source: a file path (onnx, engine) or an nn.Module (torch);
        sample: the per-sample input shape (files) or example(batch) -> input (torch)."""
        raise ConfigError(f"runtime {self.name} cannot be profiled")


_REGISTRY: dict[str, Runtime] = {}
_ORDER: dict[str, int] = {}


def register_runtime(name: str, position: int) -> Callable[[type[Runtime]], type[Runtime]]:
    """Register a Runtime subclass under `name`; `position` orders listings (backends, help)."""

    def deco(cls: type[Runtime]) -> type[Runtime]:
        rt = cls()
        rt.name = name
        rt.backends = tuple(Backend(**{**b.__dict__, "runtime": name}) for b in cls.backends)
        _REGISTRY[name] = rt
        _ORDER[name] = position
        return cls

    return deco


def _load_all() -> None:
    """Every public runtime module, imported once, registers its runtime. Private modules
    (_torch_timing: it imports torch) are their runtime's helpers, imported by it when used."""
    import_members(__file__, __package__)


def runtimes() -> list[Runtime]:
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda rt: _ORDER[rt.name])


def runtime_names() -> list[str]:
    return [rt.name for rt in runtimes()]


def find_runtime(name: str | None) -> Runtime | None:
    _load_all()
    return _REGISTRY.get(str(name))


def also_running(name: str) -> list[Runtime]:
    """The other runtimes that can check an artifact exported for runtime `name`."""
    return [rt for rt in runtimes() if name in rt.also_runs]


def backends() -> dict[str, Backend]:
    """Every profiling backend by name, in listing order."""
    return {b.name: b for rt in runtimes() for b in rt.backends}


def backend_names() -> list[str]:
    return list(backends())


def runtime_of(backend: Backend) -> Runtime:
    _load_all()
    return _REGISTRY[backend.runtime]


def unavailable(backend: Backend) -> str | None:
    """Why `backend` cannot run on this machine, or None when it can."""
    return runtime_of(backend).missing(backend)
