"""What `profile TARGET...` measures: a run directory (teacher, student and every export),
an .onnx file, a TensorRT .engine, or one of our PyTorch checkpoints (nets/checkpoint.py).

Each target becomes one Bench per selected backend that runs its kind of file; a backend
this machine lacks becomes a skipped Bench carrying the reason. torch is imported only
for checkpoints, so ONNX files profile on a box with only onnxruntime and numpy."""

from __future__ import annotations

import zipfile
from pathlib import Path

from distill_export.errors import BackendUnavailable, CheckpointError, ConfigError, DataError
from distill_export.files import check_model_file
from distill_export.profiling.input_shapes import check_given_shape, check_range, check_ranges
from distill_export.profiling.measure import Bench
from distill_export.profiling.modelinfo import onnx_info, size_bytes
from distill_export.profiling.settings import ProfileSettings
from distill_export.runtimes.base import Backend, backends, find_runtime, runtime_of, unavailable

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".pt2")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def target_kind(path: Path) -> str:
    """run | onnx | engine | torch, or a one-line error for anything else."""
    if path.is_dir():
        return "run"
    if not path.exists():
        raise ConfigError(f"profile target {path} does not exist")
    check_model_file(path, f"the model file {path} given to profile")  # a FIFO or /dev/urandom: before any read
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in CHECKPOINT_SUFFIXES:
        return "torch"
    raise ConfigError(f"unsupported profile target {path}: expected a run directory, an .onnx file, "
                      f"a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}) or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")


def benches_for_targets(targets: list[str | Path], settings: ProfileSettings) -> list[Bench]:
    if not targets:
        raise ConfigError("give at least one profile target: a run directory, .onnx, .engine or checkpoint")
    benches: list[Bench] = []
    for target in targets:
        path = Path(target)
        kind = target_kind(path)
        if kind == "run":
            found = run_dir_benches(path, settings)
        else:
            found = {"onnx": onnx_benches, "engine": engine_benches, "torch": checkpoint_benches}[kind](path, settings)
            if not found:
                names = [b.name for b in backends().values() if b.runs == kind]
                raise ConfigError(f"no selected backend runs {path.name}; add one of {', '.join(names)} to --backend")
        benches += found
    if settings.explicit:  # a named backend no target is for was recorded in settings, and ran nothing (64th B1)
        used, known = {b.backend for b in benches}, backends()
        if idle := [n for n in settings.backends if known[n].label not in used]:
            raise ConfigError(f"--backend {', '.join(idle)} runs none of the targets (it runs {known[idle[0]].runs} "
                              "files or runs); drop it from --backend")
    return _dedupe(benches)


def _selected(settings: ProfileSettings, runs: str) -> list[Backend]:
    known = backends()
    return [known[n] for n in settings.backends if known[n].runs == runs]


def _bench(model: str, fmt: str, backend: Backend, info: dict, source, sample) -> Bench:
    """One Bench of `source` (a file, or a PyTorch module) on `backend`, timed by its runtime."""
    timer = runtime_of(backend).timer(source, backend, sample, model)
    return Bench(model, backend.label, fmt, timer.make, backend.device, dict(info), None,
                 timer.gpu_memory, timer.reset_gpu_memory)


def _skipped(model: str, fmt: str, backend: Backend, reason: str, info: dict) -> Bench:
    return Bench(model, backend.label, fmt, None, backend.device, dict(info), reason)


def _dedupe(benches: list[Bench]) -> list[Bench]:
    """Two targets giving the same (model, format, backend): tell them apart by their folder, and by
    as many folders above it as it takes (p1/a/student.onnx and p2/a/student.onnx are student@p1/a and
    student@p2/a; one folder named both `student@a` and a third model: 52nd audit F2), else by number."""
    from collections import Counter

    base = [b.model for b in benches]
    for depth in range(1, 65):
        counts = Counter((b.model, b.fmt, b.backend) for b in benches)
        clashing = [i for i, b in enumerate(benches) if counts[(b.model, b.fmt, b.backend)] > 1]
        if not clashing:
            return benches
        for i in (i for i in clashing if "path" in benches[i].info):
            folders = Path(benches[i].info["path"]).resolve().parent.parts[1:]  # absolute: two files differ
            benches[i].model = f"{base[i]}@{'/'.join(folders[-depth:]) or '.'}"
    for n, i in enumerate(clashing, 1):  # the same file twice is refused before (_check_each_once)
        benches[i].model = f"{base[i]}#{n}"
    return benches


# ----- ONNX ----------------------------------------------------------------------------------


def onnx_benches(path: Path, settings: ProfileSettings, model: str | None = None, fmt: str = "onnx",
                 info: dict | None = None, input_shape: tuple[int, ...] | None = None) -> list[Bench]:
    model = model or path.stem
    selected = _selected(settings, "onnx")
    if not selected:
        return []
    info = {"path": str(path), "size_bytes": size_bytes(path), **(info or onnx_info(path))}
    shape = settings.input_shape or input_shape
    ort_cpu = backends()["ort-cpu"]
    if unavailable(ort_cpu) is None:
        # Open it once up front: a corrupt file or an unfeedable input fails here, in one line.
        from distill_export.runtimes.onnx_runtime import input_specs, open_session

        session = open_session(path, 1, ort_cpu)
        input_specs(session, path, shape)
        check_given_shape(settings.input_shape, path, {i.name: i.shape[1:] for i in session.get_inputs()}, fills=True)
    out = []
    for backend in selected:
        reason = unavailable(backend)
        if reason:
            out.append(_skipped(model, fmt, backend, reason, info))
            continue
        out.append(_bench(model, fmt, backend, info, path, shape))
    return out


def onnx_input_shape(path: Path) -> tuple[int, ...] | None:
    """The per-sample shape of an ONNX file's first input, when it is static."""
    ort_cpu = backends()["ort-cpu"]
    if unavailable(ort_cpu):
        return None
    from distill_export.runtimes.onnx_runtime import open_session

    dims = open_session(path, 1, ort_cpu).get_inputs()[0].shape[1:]
    return tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None


# ----- TensorRT --------------------------------------------------------------------------------


def engine_benches(path: Path, settings: ProfileSettings, model: str | None = None, fmt: str = "tensorrt",
                   input_shape: tuple[int, ...] | None = None) -> list[Bench]:
    model = model or path.stem
    info = {"path": str(path), "size_bytes": size_bytes(path)}
    if settings.input_shape is not None:  # the engine runs at the shape it was built for (its stamp)
        from distill_export.runtimes.tensorrt_engine import engine_stamp

        declared = engine_stamp(path).get("input_shape", [])[1:]
        if declared and all(isinstance(d, int) and d > 0 for d in declared):
            check_given_shape(settings.input_shape, path, {"input": declared}, fills=False)
    out = []
    for backend in _selected(settings, "engine"):
        reason = unavailable(backend)
        if reason:
            out.append(_skipped(model, fmt, backend, reason, info))
            continue
        out.append(_bench(model, fmt, backend, info, path, settings.input_shape or input_shape))
    return out


# ----- PyTorch checkpoints ---------------------------------------------------------------------


def checkpoint_benches(path: Path | str, settings: ProfileSettings, model: str | None = None,
                       weights: str | None = None, factory: str | None = None) -> list[Bench]:
    """Our checkpoint (teacher or student), or an external teacher (.pt2, package.module:factory).
    factory: the run's student.name, the only package.module:factory a student checkpoint may name."""
    selected = _selected(settings, "torch")
    if not selected:
        return []
    is_file = Path(str(path)).is_file()
    if is_file and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a readable checkpoint (not a PyTorch zip archive)")
    info = {"path": str(path), **({"size_bytes": size_bytes(path)} if is_file else {})}
    live = [b for b in selected if not unavailable(b)]
    if not live:  # no torch (an edge box), or no GPU for the GPU backends
        name = model or Path(str(path)).stem
        return [_skipped(name, "pytorch", b, unavailable(b), info) for b in selected]
    loaded = load_torch_model(path, weights, settings.sweep.max_call_s, factory, fill=settings.input_shape,
                              batches=list(settings.sweep.batches or [1]))
    # A checkpoint says its own shape; a .pt2 with dynamic dims takes the flag's there (twenty-sixth audit B8)
    check_given_shape(settings.input_shape, path, loaded["input_shapes"], fills=loaded["dynamic"])
    for name, bounds in (getattr(loaded["module"], "input_ranges", {}) or {}).items():
        if bounds and bounds[0] and bounds[0][0] != bounds[0][1]:  # a fixed batch: its other cells skipped, as ONNX's
            check_range(path, "--batch", settings.sweep.batches, name, 0, bounds[0])
    if model is None and loaded.get("skip"):  # a file given to profile: one line, as for an ONNX file (59th B9)
        raise ConfigError(loaded["skip"])
    # a .pt2 given as a file is named by it, as an ONNX file is: any program was called "teacher", and the
    # speedups over it were said to be over a teacher (fifty-eighth audit B14)
    name = model or (Path(str(path)).stem if is_file and str(path).endswith(".pt2") else loaded["model"])
    info = {**info, "params": loaded["params"], "macs": loaded["macs"]}
    out = []
    for backend in selected:
        reason = unavailable(backend) or loaded.get("skip")
        if reason:
            out.append(_skipped(name, "pytorch", backend, reason, info))
            continue
        out.append(_bench(name, "pytorch", backend, info, loaded["module"], loaded["example"]))
    return out


def load_torch_model(path, weights=None, max_call_s: float | None = None, factory: str | None = None,
                     fill: tuple[int, ...] | None = None, batches: list[int] | None = None) -> dict:
    """{"module", "example"(batch -> input), "model" (teacher|student|baseline), "params", "macs",
    "input_shape" (students), "input_shapes" (as declared), "dynamic" (a declared dim is not fixed),
    "skip" (why it cannot be timed, e.g. unknown input shapes)}.
    max_call_s: a .pt2's per-call limit (profile.max_call_s), from its first call (the MAC count) on.
    fill: --input-shape, the per-sample dims fed where a program's are dynamic; batches: the sweep's."""
    import torch

    from distill_export.nets.checkpoint import load_checkpoint
    from distill_export.profiling.modelinfo import count_macs, count_params
    from distill_export.nets.model_io import load_teacher

    try:
        from distill_export.nets.external import is_external_teacher
    except ImportError:  # an older tree without bring-your-own teachers
        is_external_teacher = lambda p: False  # noqa: E731

    gen = torch.Generator().manual_seed(0)
    student_shape, shapes = None, {}
    if is_external_teacher(path):
        module, kind = load_teacher(path, None, weights, max_call_s=max_call_s), "teacher"
        shapes = dict(getattr(module, "input_shapes", {}) or {})
        if Path(str(path)).is_file() and not getattr(module, "modality_names", True):  # was "give --input-shape" (59th B8)
            raise ConfigError(f"{path} takes no inputs: there is no batch to feed it, so nothing to time")
    else:
        payload = load_checkpoint(path)
        kind = payload["kind"]
        if kind == "teacher":
            module = load_teacher(path)
            shapes = payload.get("meta", {}).get("input_shapes") or dict(getattr(module, "input_shapes", {}) or {})
        elif kind == "student":
            from distill_export.nets.model_io import load_student

            module, meta = load_student(path, factory)
            student_shape = tuple(meta["input_shape"])
            kind = "baseline" if meta.get("role") == "baseline" else "student"
        else:
            raise CheckpointError(f"{path} holds a {kind!r}; the profiler runs teacher and student checkpoints")
    from distill_export.runtimes.onnx_bounds import check_feed_size

    declared = shapes
    dynamic = any(d is None for s in shapes.values() for d in s)
    if dynamic and fill is not None:
        shapes = {m: [g if d is None else d for d, g in zip(s, fill)] if len(s) == len(fill) else s
                  for m, s in shapes.items()}
        check_ranges(path, fill, shapes, getattr(module, "input_ranges", {}) or {},
                      getattr(module, "input_exprs", {}) or {}, batches or [1])
    for name, dims in ({"input": student_shape} if student_shape is not None else shapes).items():
        if dims and all(isinstance(d, int) for d in dims):  # a .pt2 declaring 1x100000x100000 (twenty-fourth audit B2)
            check_feed_size(path, name, (max(batches or [1]), *dims), 4)  # the largest batch the sweep feeds (B4)
    if student_shape is not None:
        example = lambda b: torch.randn(b, *student_shape, generator=gen)  # noqa: E731
    else:
        if not shapes or any(d is None for s in shapes.values() for d in s):
            return {"module": module, "example": None, "model": kind, "params": count_params(module),
                    "macs": None, "input_shapes": declared, "dynamic": dynamic,
                    "skip": f"the input shapes of {path} are not fixed; give --input-shape (one sample's dims) "
                            "to profile it"}
        # Text inputs are hashed n-gram ids (B, L) into `buckets` embedding rows, not floats.
        kinds = (payload.get("arch_kwargs", {}).get("kinds") or {}) if not is_external_teacher(path) else {}
        buckets = (payload.get("arch_kwargs", {}).get("modalities") or {}) if kinds else {}

        dtypes = getattr(module, "input_dtypes", {}) or {}  # a .pt2's own: integer ids get zeros, as ONNX's do
        ranges = getattr(module, "input_ranges", {}) or {}
        fixed = {r[0][0] for r in ranges.values() if r and r[0] and r[0][0] == r[0][1]}  # the batch a program fixes

        def example(b):
            if fixed and b not in fixed:  # a skipped cell, as an ONNX file's fixed batch (59th A4)
                raise BackendUnavailable(f"{Path(str(path)).name} has a fixed batch of {min(fixed)}")
            return {
                m: torch.randint(1, max(2, int(buckets.get(m, 2))), (b, *s), generator=gen)
                if kinds.get(m) == "text" else _random(b, s, dtypes.get(m), gen)
                for m, s in shapes.items()
            }
    first = min(fixed) if student_shape is None and fixed else 1  # `fixed`: set where student_shape is None
    return {"module": module, "example": example, "model": kind, "params": count_params(module),
            "macs": count_macs(module, example(first)), "input_shape": student_shape, "dynamic": dynamic,
            "input_shapes": {"input": list(student_shape)} if student_shape is not None else declared}


def _random(batch: int, shape, dtype, gen):
    """(batch, *shape) of the input's dtype: floats drawn, integer and bool inputs zeros (ids, masks)."""
    import torch

    if dtype is None or dtype.is_floating_point:
        return torch.randn(batch, *shape, generator=gen).to(dtype or torch.float32)
    return torch.zeros(batch, *shape, dtype=dtype)


# ----- run directories ---------------------------------------------------------------------------


def run_dir_benches(path: Path, settings: ProfileSettings) -> list[Bench]:
    """Teacher and student checkpoints on the PyTorch backends, every export on its runtime."""
    from distill_export.rundir import RunDir

    run = RunDir.existing(path)
    config = run.load_config()
    report = run.load_report()
    exports = report.get("exports", {})
    benches: list[Bench] = []

    teacher = config.teacher.path or run.file("teacher.pt")
    if config.teacher.path is None and not Path(teacher).is_file():
        teacher = None
    student_path = run.file("student.pt")
    if teacher is not None:
        benches += checkpoint_benches(teacher, settings, "teacher", getattr(config.teacher, "weights", None))
    benches += teacher_onnx_benches(run, report, settings)
    student_benches = (checkpoint_benches(student_path, settings, "student", factory=config.student.name)
                       if student_path.is_file() else [])
    benches += student_benches
    # The exports are the student: same parameters and MACs (when torch could count them).
    student_info = {k: student_benches[0].info[k] for k in ("params", "macs") if student_benches and k in student_benches[0].info}
    for fmt, art in exports.items():
        file = run.file(art["path"])
        if not file.is_file():
            raise DataError(f"export {fmt} of {path} is missing ({file}); run `distill-export export {path}` again")
        runs = getattr(find_runtime(art.get("runtime")), "runs", None)  # the kind of file it is
        if runs == "onnx":
            benches += onnx_benches(file, settings, "student", fmt, student_info or None)
        elif runs == "engine":
            benches += engine_benches(file, settings, "student", fmt, _student_shape(run, exports))
    if not benches:
        raise ConfigError(f"{path} has nothing to profile yet; run `distill-export distill {path}` first")
    return benches


def teacher_onnx_benches(run, report: dict, settings: ProfileSettings) -> list[Bench]:
    """The teacher's FP32 ONNX (one input per modality) on the ONNX backends, so the student's
    ONNX rows have a teacher on the same runtime; a teacher that was not exported gives skipped
    rows that say why."""
    art = (report.get("teacher_exports") or {}).get("onnx")
    if not art:
        return []  # a run exported before teachers were
    if art.get("skipped"):
        reason = f"the teacher was not exported to ONNX: {art['skipped']}"
        return [_skipped("teacher", "onnx", b, reason, {}) for b in _selected(settings, "onnx")]
    file = run.file(art["path"])
    if not file.is_file():
        return [_skipped("teacher", "onnx", b, f"{file} is missing; run `distill-export export` again", {})
                for b in _selected(settings, "onnx")]
    return onnx_benches(file, settings, "teacher", "onnx")


def _student_shape(run, exports: dict) -> tuple[int, ...] | None:
    """The student's per-sample input shape, read from its FP32 ONNX export (no torch needed)."""
    for art in exports.values():
        if art.get("runtime") == "onnxruntime" and run.file(art["path"]).is_file():
            return onnx_input_shape(run.file(art["path"]))
    return None
