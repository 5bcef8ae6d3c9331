"""report.json's sections for what ships: the exports with their parity (export, validate),
the latency rows, speedups and settings of a profile, and the recommended artifact per target.
The training sections and the whole record are in models.py."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from distill_export.record.metrics import Count, NonNegative, Positive, RecordSection, RunPath, check_order_statistics


class Gate(RecordSection):
    value: float
    limit: float
    kind: str  # "max": value <= limit; "min": value >= limit
    passed: bool


class ParityNumbers(RecordSection):
    """Export vs its PyTorch reference on the test split (validate.compare)."""

    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    min_cosine: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    reference_accuracy: float | None = None


class Parity(ParityNumbers):
    """The worst case over batch sizes, its gates, and the same on other runtimes
    (`runtimes.openvino`: its own Parity, or only `skipped`)."""

    skipped: str | None = None
    per_batch: dict[str, ParityNumbers] = Field(default_factory=dict)
    gates: dict[str, Gate] = Field(default_factory=dict)
    passed: bool | None = None
    teacher_accuracy_retention: float | None = None
    runtimes: dict[str, Parity] | None = None
    artifact_sha256: str | None = None  # the file validate checked; consumers refuse another (RunDir)


class Export(RecordSection):
    """One exported artifact (export.base.ExportResult) and, once validated, its parity.
    A teacher that would not export has only `skipped`."""

    skipped: str | None = None
    format: str | None = None
    path: RunPath | None = None  # relative to the run directory, inside it
    precision: str | None = None  # fp32 | fp16 | int8
    runtime: str | None = None  # onnxruntime | tensorrt
    size_bytes: Count | None = None
    seconds: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    parity: Parity | None = None


class LatencyRow(RecordSection):
    """One model on one backend at one (batch, threads) cell (`skipped`, batch/threads null: could
    not run). Times and throughput are finite, >= 0 and ordered: else a corrupt (hand-edited) record."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    format: str
    backend: str
    device: str = "cpu"
    batch: Positive | None = None
    threads: int | None = None
    skipped: str | None = None
    path: str | None = None
    size_bytes: Count | None = None
    params: Count | None = None
    macs: Count | None = None
    mean_ms: NonNegative | None = None
    std_ms: NonNegative | None = None
    min_ms: NonNegative | None = None
    p50_ms: NonNegative | None = None
    p90_ms: NonNegative | None = None
    p95_ms: NonNegative | None = None
    p99_ms: NonNegative | None = None
    max_ms: NonNegative | None = None
    iterations: Positive | None = None
    throughput: NonNegative | None = None  # samples/s
    cpu_p50_ms: NonNegative | None = None  # one thread: the calling thread's CPU time per call

    @model_validator(mode="after")
    def _order_statistics_ascend(self):  # a p50 above its p90 is a hand edit (J10)
        return check_order_statistics(self)


    @property
    def measured(self) -> bool:
        return self.p50_ms is not None


class Speedup(RecordSection):
    """p50 of the reference (the teacher) / p50 of the model, same run and cell: finite and >= 0
    (seventh audit RJ_speedinf: Infinity was rendered "×inf")."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    format: str
    backend: str
    batch: Positive
    threads: int | None = None
    reference: str = "teacher"  # "teacher (<backend>)"
    reference_format: str | None = None
    like_for_like: bool = False  # the same runtime as the reference (migrate derives it for old files)
    speedup: NonNegative
    cpu_speedup: NonNegative | None = None


def check_speedups(latency: list[LatencyRow], speedups: list[Speedup]) -> None:
    """Each speedup is the ratio of its two latency rows' p50s, as profiling.measure.speedups
    made it: a hand-edited 1e300 was rendered as a 301-digit ratio beside rows giving x1.2
    (fifty-fourth audit A4). A row no longer in the record leaves its speedup unchecked."""
    rows = {(r.model, r.format, r.backend, r.batch, r.threads): r.p50_ms for r in latency if r.p50_ms}
    for i, s in enumerate(speedups):
        ref_model, _, ref_backend = s.reference.rpartition(" (")
        ref = rows.get((ref_model, s.reference_format, ref_backend.removesuffix(")"), s.batch, s.threads))
        own = rows.get((s.model, s.format, s.backend, s.batch, s.threads))
        if ref and own and abs(s.speedup - ref / own) > 1e-6 * max(1.0, ref / own):
            raise ValueError(f"speedups[{i}].speedup {s.speedup:.6g} is not the p50 ratio of its latency rows "
                             f"({ref / own:.6g})")


class Machine(RecordSection):
    platform: str | None = None
    machine: str | None = None
    cpu: str | None = None
    cores: int | None = None
    usable_cores: int | None = None
    load_average_1m: float | None = None


class ProfileSettings(RecordSection):
    preset: str | None = None
    backends: list[str] | None = None
    batches: list[int] | None = None
    threads: list[int] | None = None
    warmup_s: float | None = None
    min_time_s: float | None = None
    min_iters: int | None = None
    input_shape: list[int] | None = None


class Profile(RecordSection):
    targets: list[str] = Field(default_factory=list)
    settings: ProfileSettings | None = None
    notes: list[str] = Field(default_factory=list)
    machine: Machine = Field(default_factory=Machine)
    versions: dict[str, Any] = Field(default_factory=dict)  # package -> version
    peak_rss_mb: float | None = None
    seconds: float | None = None


class Recommendation(RecordSection):
    """recommend.recommend: the artifact to ship on one target, or (format null) why none. Its
    numbers are finite, times and speedups >= 0 (seventh audit RJ_recnan: "p50 nan ms")."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    target: str | None = None
    batch: Positive | None = None
    excluded: dict[str, str] = Field(default_factory=dict)  # "<format> on <backend>" -> why not
    format: str | None = None
    reason: str | None = None
    backend: str | None = None
    threads: int | None = None
    device: str | None = None
    path: RunPath | None = None
    precision: str | None = None
    p50_ms: NonNegative | None = None
    cpu_p50_ms: NonNegative | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    speedup_vs_fp32_onnx: NonNegative | None = None
    fp32_onnx_reference: str | None = None
    speedup_vs_teacher: NonNegative | None = None
    teacher_reference: str | None = None
    teacher_missing: str | None = None
