"""Stage 4: parity of every exported artifact against the PyTorch student, with gates.

Needs no torch: the export stage stores the test inputs, labels and the PyTorch
student's logits in ``parity_data.npz``, so an edge box with only onnxruntime can
check its own runtime against the model that was trained.

With the openvino extra installed, every ONNX artifact is also run by OpenVINO's CPU plugin
(the ONNX file itself) against the same gates; the result sits in the artifact's parity under
``runtimes.openvino`` (or says why it was skipped). It is reported, and decides whether the
artifact may be recommended on OpenVINO, but the artifact's own verdict (``passed``, the exit
code) stays ONNX Runtime's, the runtime it was exported for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill_export.errors import ConfigError, DataError
from distill_export.files import npz_failure
from distill_export.stage_graph import PARITY_FILE, TEACHER_PARITY_FILE  # noqa: F401  (imported from here too)


@dataclass
class Gate:
    name: str
    value: float
    limit: float
    kind: str  # "max" (value <= limit) or "min" (value >= limit)

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.limit if self.kind == "max" else self.value >= self.limit)

    def to_dict(self) -> dict:
        return {"value": self.value, "limit": self.limit, "kind": self.kind, "passed": self.passed}


def gate_limit(gate, cfg) -> float:
    """A task gate's limit: validate.<name> when ValidateConfig has the field, else
    validate.gates[name], else the task's default."""
    if hasattr(cfg, gate.config_key):
        return float(getattr(cfg, gate.config_key))
    return float((getattr(cfg, "gates", None) or {}).get(gate.config_key, gate.default))


def gates_for(precision: str, cfg, task) -> list[tuple[str, str, float]]:
    """(metric, kind, limit) per precision, from the task's gates (tasks/base.Gate)."""
    gates = [(g.metric, g.kind, gate_limit(g, cfg)) for g in task.gates if g.precision == precision]
    if not gates:
        raise ConfigError(f"no parity gates for precision {precision!r}")
    return gates


def parse_gate_flags(flags: list[str] | None, task) -> dict[str, float]:
    """`--gate fp32_max_abs=1e-5` -> {"validate.fp32_max_abs": 1e-5}; unknown names, and values
    outside the config's own range for the key (nan, inf, < 0, an agreement > 1), fail."""
    import difflib

    from distill_export.config_checks import check_value, plain_number

    names = [g.config_key for g in task.gates]
    out = {}
    for flag in flags or []:
        key, sep, value = flag.partition("=")
        key = key.strip()
        other = _gate_of_other_task(key, task) if key not in names else None
        if other:  # fp32_agreement on a detection run: NAME=VALUE is right, the task is not
            raise ConfigError(f"--gate {key} is a {other} gate, but this run's task is {task.name}; its gates: "
                              f"{', '.join(names)}")
        if not sep or key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]}?" if close else f"gates: {', '.join(names)}"
            raise ConfigError(f"--gate expects NAME=VALUE, got {flag!r} ({hint})")
        try:
            number = plain_number(value)  # "1_0" is not 10 (eleventh audit B1)
        except ValueError:
            raise ConfigError(f"--gate {key}: expected a plain number (ASCII digits, no '_'), got {value!r}") from None
        try:
            check_value(f"validate.{key}", number)
        except ConfigError as exc:
            raise ConfigError(f"--gate {key}: {exc}") from None
        if f"validate.{key}" in out and out[f"validate.{key}"] != number:  # the last one won in silence (36th A2)
            raise ConfigError(f"--gate {key} is given twice ({out[f'validate.{key}']:g} and {number:g}); give it once")
        out[f"validate.{key}"] = number + 0.0  # -0 is 0: shown as "<= 0", not "<= -0" (thirty-sixth audit A3)
    return out


def _gate_of_other_task(name: str, task) -> str | None:
    """The task whose gate `name` is (fp32_agreement on a detection run: classification), or None."""
    from distill_export.tasks import get_task, task_names

    return next((t for t in task_names() if t != task.name and name in {g.config_key for g in get_task(t).gates}),
                None)


def check_gates_apply(gates: dict[str, float], report: dict, task) -> None:
    """A --gate whose precision no export of the run has would be silently unused: refused, naming
    the gate and the run's exports (as the INT8 calibration flags are without an INT8 format)."""
    exports = report.get("exports") or {}
    if not exports:  # nothing exported: validate says so itself ("run `distill-export export` first")
        return
    precisions = {art.get("precision") for art in exports.values()}
    if ((report.get("teacher_exports") or {}).get("onnx") or {}).get("path"):
        precisions.add("fp32")  # the teacher's ONNX is judged by the FP32 gates
    by_key = {g.config_key: g.precision for g in task.gates}
    for key in gates:
        name = key.split(".", 1)[1]
        if by_key.get(name) not in precisions:
            listed = ", ".join(f"{fmt} ({art.get('precision')})" for fmt, art in exports.items())
            raise ConfigError(f"--gate {name} judges {by_key.get(name)} exports, but this run has none "
                              f"(its exports: {listed}); drop --gate {name} or export that precision first")


def save_parity_data(path: str | Path, x: np.ndarray, labels: np.ndarray, reference, checkpoint_sha256: str = "") -> None:
    """Test inputs, labels and what the exported graph must return, computed by the PyTorch
    student (Task.decode of its raw outputs): one array (`logits`) or {output name: array}."""
    from distill_export.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, x=x.astype(np.float32), labels=labels, **_reference_arrays(reference),
                     checkpoint_sha256=np.array(checkpoint_sha256))


def _reference_arrays(reference) -> dict[str, np.ndarray]:
    if isinstance(reference, dict):
        return {f"ref__{name}": v for name, v in reference.items()}
    return {"logits": reference.astype(np.float32)}


def _reference_from(f) -> object:
    names = [k for k in f.files if k.startswith("ref__")]
    return {k[5:]: f[k] for k in names} if names else f["logits"]


def load_parity_data(path: str | Path, run=None) -> dict:
    """{"x", "labels", "reference" (an array or {output name: array}), "checkpoint_sha256"}.

    With `run` (the RunDir whose file it is), the file must be the one export wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; run `distill-export export` first")
    try:
        with np.load(path) as f:
            data = {"x": f["x"], "labels": f["labels"], "reference": _reference_from(f)}
            data["checkpoint_sha256"] = str(f["checkpoint_sha256"]) if "checkpoint_sha256" in f.files else ""
    except (OSError, ValueError, KeyError, MemoryError) as exc:  # MemoryError: a header declaring a huge shape
        raise DataError(f"{path} is not readable parity data ({npz_failure(exc)}); re-run `distill-export export`") from None
    arrays = {"x": data["x"], **(data["reference"] if isinstance(data["reference"], dict) else
                                 {"reference": data["reference"]})}
    rows = {name: int(np.shape(a)[0]) if np.ndim(a) else 0 for name, a in {**arrays, "labels": data["labels"]}.items()}
    if len(set(rows.values())) > 1:  # eighteenth audit: a cut x was blamed on student.onnx's output shape
        raise DataError(f"{path} holds arrays of different row counts ({', '.join(f'{k} {v}' for k, v in rows.items())}; "
                        "export writes them together); re-run `distill-export export`")
    check_finite(path, arrays)  # seventeenth audit B4: a NaN was blamed on the export (exit 1), written into the report
    if run is not None:  # after the checks above, which say what changed
        run.check_parity_file(path)
    if not isinstance(data["reference"], dict):
        data["logits"] = data["reference"]
    return data


def check_finite(path: Path, arrays: dict[str, np.ndarray], error: type[DataError] = DataError) -> None:
    """Export writes finite arrays into a parity file: a NaN or inf in one would fail every gate."""
    for name, array in arrays.items():
        bad = int(np.count_nonzero(~np.isfinite(array))) if np.issubdtype(array.dtype, np.floating) else 0
        if bad:
            raise error(f"{path} holds {bad} NaN or inf values in its {name!r} array (export writes finite "
                        "ones: the file changed after export); re-run `distill-export export`")


def check_output_shapes(path, outputs, reference) -> None:
    """An export must return what the PyTorch reference returns: the same outputs, same shapes."""
    ref = reference if isinstance(reference, dict) else {"logits": reference}
    got = outputs if isinstance(outputs, dict) else {"logits": outputs}
    if sorted(got) != sorted(ref):
        raise DataError(f"{path} returned outputs {', '.join(sorted(got))}, expected {', '.join(sorted(ref))}")
    for name, want in ref.items():
        if got[name].shape != want.shape:
            raise DataError(f"{path} returned {name} of shape {got[name].shape}, expected {want.shape}")


def _check_source(artifact: dict, facts: dict, checkpoint_sha256: str) -> None:
    """An artifact left from an earlier export of another student.pt would be judged against
    the wrong reference logits: say so instead of failing its gates for no visible reason."""
    made_from = facts.get("source_checkpoint_sha256")
    if checkpoint_sha256 and made_from and made_from != checkpoint_sha256:
        raise DataError(
            f"{artifact['path']} was exported from another student.pt (sha256 {made_from[:12]}…) than the "
            f"parity data ({checkpoint_sha256[:12]}…); re-run `distill-export export` with --format {artifact['format']}"
        )


def make_runner(artifact: dict, threads: int = 0, sample_shape: tuple[int, ...] | None = None,
                checkpoint_sha256: str = ""):
    """(x, batch_size) -> logits for one artifact from report.json's exports, on the runtime it
    names (runtimes/: onnxruntime, openvino (the same ONNX file, compiled by OpenVINO), tensorrt).

    With `sample_shape` (one input row, e.g. (1, 28, 28)) the artifact's input signature is
    checked against the run's data first.
    """
    from distill_export.runtimes.base import find_runtime

    runtime = find_runtime(artifact["runtime"])
    if runtime is None:
        raise ConfigError(f"unknown runtime {artifact['runtime']!r} for {artifact['path']}")
    return runtime.runner(artifact["path"], threads, tuple(sample_shape) if sample_shape is not None else None,
                          lambda facts: _check_source(artifact, facts, checkpoint_sha256))


def validate_artifact(
    artifact: dict, parity: dict[str, np.ndarray], cfg, task, teacher_accuracy: float | None
) -> dict:
    """Parity at batch 1 and at a larger batch (so the dynamic axis is exercised)."""
    x, labels, reference = parity["x"], parity["labels"], parity["reference"]
    run = make_runner(artifact, 0, tuple(x.shape[1:]), parity.get("checkpoint_sha256", ""))
    per_batch = {}
    for bs in cfg.batch_sizes:
        outputs = run(x, bs)
        check_output_shapes(artifact["path"], outputs, reference)
        per_batch[str(bs)] = task.parity(outputs, reference, labels)
    worst = task.worst_case(per_batch)
    gates = [Gate(n, worst[n], lim, kind) for n, kind, lim in gates_for(artifact["precision"], cfg, task)]
    result = {
        **worst,
        "per_batch": per_batch,
        "gates": {g.name: g.to_dict() for g in gates},
        "passed": all(g.passed for g in gates),
    }
    if teacher_accuracy and task.headline in worst:
        result["teacher_accuracy_retention"] = worst[task.headline] / teacher_accuracy
    return result


def validate_exports(exports: dict, parity: dict[str, np.ndarray], cfg, task,
                     teacher_accuracy: float | None) -> dict[str, dict]:
    if not exports:
        raise ConfigError("no exported artifacts to validate; run `distill-export export` first")
    results = {}
    from distill_export.runtimes.base import also_running
    from distill_export.runtimes.onnx_bounds import call_limit

    with call_limit(cfg.max_call_s):  # an artifact swapped for a runaway model is stopped and refused
        for fmt, art in exports.items():
            results[fmt] = validate_artifact(art, parity, cfg, task, teacher_accuracy)
            others = also_running(art["runtime"])  # e.g. OpenVINO, for an ONNX Runtime artifact
            if others:
                results[fmt]["runtimes"] = {rt.name: validate_on_runtime(rt, art, parity, cfg, task, teacher_accuracy)
                                            for rt in others}
    return results


def validate_on_runtime(runtime, artifact: dict, parity: dict, cfg, task, teacher_accuracy) -> dict:
    """The artifact's gates on another runtime that runs its file (OpenVINO for ONNX), or
    {"skipped": why} when that runtime is not installed or cannot compile the file."""
    missing = runtime.missing()
    if missing:
        return {"skipped": missing}
    try:
        return validate_artifact({**artifact, "runtime": runtime.name}, parity, cfg, task, teacher_accuracy)
    except DataError as exc:  # e.g. an operator OpenVINO cannot compile: reported, not fatal
        return {"skipped": str(exc)}


def runtime_results(results: dict[str, dict]) -> dict[str, dict]:
    """{"onnx on openvino": result} for the other runtimes each artifact was checked on."""
    return {f"{fmt} on {rt}": r for fmt, res in results.items()
            for rt, r in (res.get("runtimes") or {}).items() if "gates" in r}




def save_teacher_parity_data(path: str | Path, inputs: dict[str, np.ndarray], labels: np.ndarray,
                             reference_logits: np.ndarray) -> None:
    """The teacher's test inputs (one array per modality), labels and PyTorch raw outputs."""
    from distill_export.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, labels=labels, logits=reference_logits.astype(np.float32),
                     **{f"x__{m}": v for m, v in inputs.items()})


class TamperedParity(DataError):
    """A parity file that is not what export wrote: refused, not reported as the export's failure."""


def load_teacher_parity_data(path: str | Path, run=None) -> dict:
    """{"inputs": {modality: array}, "labels", "logits"}; with `run`, the file export wrote."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; run `distill-export export` first")
    try:
        with np.load(path) as f:
            data = {"inputs": {k[3:]: f[k] for k in f.files if k.startswith("x__")},
                    "labels": f["labels"], "logits": f["logits"]}
    except (OSError, ValueError, KeyError, MemoryError) as exc:
        raise DataError(f"{path} is not readable parity data ({npz_failure(exc)}); re-run `distill-export export`") from None
    check_teacher_parity_data(path, data, run)
    return data


def check_teacher_parity_data(path: Path, data: dict, run=None) -> None:
    """As load_parity_data checks the student's: finite arrays, then the file export wrote (a NaN
    input or replaced logits were blamed on teacher.onnx, and Infinity written into report.json:
    70th audit B1, B2). TamperedParity: refused, never a warning about the teacher."""
    check_finite(path, {**{f"x__{m}": v for m, v in data["inputs"].items()}, "logits": data["logits"]}, TamperedParity)
    if run is not None:
        try:
            run.check_parity_file(path)
        except DataError as exc:
            raise TamperedParity(str(exc)) from None



def validate_teacher_onnx(path: str | Path, parity: dict, cfg, task) -> dict:
    """Parity of the teacher's FP32 ONNX (one input per modality) against the PyTorch teacher,
    with the FP32 gates (fp32_max_abs, fp32_agreement), worst case over cfg.batch_sizes."""
    from distill_export.runtimes.onnx_bounds import call_limit
    from distill_export.runtimes.onnx_runtime import onnx_session, run_onnx_inputs

    session = onnx_session(path, 0)
    raw, labels = parity["logits"], parity["labels"]
    reference = task.decode(raw)  # the teacher's graph returns raw outputs: judged as the task reads them
    per_batch = {}
    for bs in cfg.batch_sizes:
        with call_limit(cfg.max_call_s):
            out = run_onnx_inputs(session, parity["inputs"], bs)
        if out.shape != raw.shape:
            raise DataError(f"{path} returned outputs of shape {out.shape}, expected {raw.shape}")
        per_batch[str(bs)] = task.parity(task.decode(out), reference, labels)
    worst = task.worst_case(per_batch)
    gates = [Gate(n, worst[n], lim, kind) for n, kind, lim in gates_for("fp32", cfg, task)]
    return {**worst, "per_batch": per_batch, "gates": {g.name: g.to_dict() for g in gates},
            "passed": all(g.passed for g in gates)}


def failed_gates(results: dict[str, dict]) -> list[str]:
    """One phrase per failed gate, e.g. "onnx-int8 top1_agreement 0.9700 < 0.98"."""
    out = []
    for fmt, res in results.items():
        for name, g in res["gates"].items():
            if not g["passed"]:
                op = "<" if g["kind"] == "min" else ">"
                out.append(f"{fmt} {name} {g['value']:.4g} {op} {g['limit']:.4g}")
    return out


def gate_rows(results: dict[str, dict]) -> list[list[str]]:
    """format, precision-free gate table: one row per gate with its value, limit and verdict
    (then the same artifacts on OpenVINO, when it ran them)."""
    rows = []
    for fmt, res in {**results, **runtime_results(results)}.items():
        for name, g in res["gates"].items():
            op = ">=" if g["kind"] == "min" else "<="
            rows.append([fmt, name, f"{g['value']:.6g}", f"{op} {g['limit']:.6g}", "PASS" if g["passed"] else "FAIL"])
    return rows


def print_gates(results: dict[str, dict], console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Parity gates (worst case over batch sizes)")
    for col in ("format", "gate", "value", "limit", "result"):
        table.add_column(col)
    for row in gate_rows(results):
        style = "green" if row[-1] == "PASS" else "bold red"
        table.add_row(*row[:-1], Text.assemble((row[-1], style)))  # styled word, unstyled padding
    console.print(table)
