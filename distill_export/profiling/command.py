"""`distill-export profile TARGET...`: settings from flags, one session, results saved.

A single run-directory target is updated in place (report.json `latency`, `speedups`
and `profile`, latency.csv, report.md/html and plots); otherwise results go to --out
when it is given (profile.json, latency.csv, plots/)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from distill_export.errors import ConfigError
from distill_export.profiling.session import ProfileResult, profile_targets
from distill_export.profiling.settings import make_settings, parse_ints


def parse_shape(spec: str | None) -> tuple[int, ...] | None:
    dims = parse_ints(spec, "--input-shape")
    if dims is not None and (not dims or any(d < 1 for d in dims)):
        raise ConfigError(f"--input-shape: expected positive per-sample dimensions like 1,28,28, got {spec!r}")
    return tuple(dims) if dims else None


def _check_each_once(targets: list[Path]) -> None:
    try:
        resolved = [Path(t).resolve() for t in targets]
    except (OSError, ValueError):  # an unreadable path: the target checks name it
        return
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            first = targets[resolved.index(path)]
            same = f"{targets[i]} is given twice" if str(first) == str(targets[i]) else f"{first} and {targets[i]} are the same path"
            raise ConfigError(f"{same}; name each target once")
        hard = next((t for t, r in zip(targets[:i], resolved[:i]) if _same_file(r, path)), None)
        if hard is not None:  # a hard link: two paths, one file (52nd audit A3)
            raise ConfigError(f"{hard} and {targets[i]} are the same file (a hard link); name each target once")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.is_file() and b.is_file() and a.samefile(b)
    except OSError:
        return False


def profile_command(
    targets: list[Path], *, preset: str | None = None, threads: str | None = None, batches: str | None = None,
    backends: str | None = None, device: str | None = None, input_shape: str | None = None,
    warmup_s: float | None = None, min_time_s: float | None = None, min_iters: int | None = None,
    max_call_s: float | None = None, out: Path | None = None, progress: Callable[[str], None] | None = None,
) -> tuple[ProfileResult, list[Path]]:
    """Returns the result and the files written."""
    from distill_export.config import ProfileConfig
    from distill_export.output_paths import check_output

    if out is not None:  # a new or empty folder outside any run, checked before anything is measured
        check_output(out, folder=True, flag="--out")
    _check_each_once(targets)  # the same model twice would be measured and listed twice (an audit's leftover)
    run_dir = targets[0] if len(targets) == 1 and Path(targets[0]).is_dir() else None
    if run_dir is not None and input_shape is not None:  # it would be recorded but not used (a fresh audit)
        raise ConfigError(f"--input-shape {input_shape} is for model files that do not say their input; the "
                          f"models of run {run_dir} take the run's own input shape: drop --input-shape")
    base = ProfileConfig()
    if run_dir is not None:
        from distill_export.config_edits import check_hand_edits
        from distill_export.rundir import RunDir

        run = RunDir.existing(run_dir)
        run_config = run.load_config()
        check_hand_edits(run, run_dir, run_config.to_dict(), "profile")  # e.g. teacher.path edited after distill
        base = run_config.profile  # the run's sweep and time budget
    for name, value in (("warmup_s", warmup_s), ("min_time_s", min_time_s), ("min_iters", min_iters),
                        ("max_call_s", max_call_s)):
        if value is not None:
            setattr(base, name, value)
    settings = make_settings(
        base, preset=preset, batches=parse_ints(batches, "--batch", distinct=True),
        threads=parse_ints(threads, "--threads", distinct=True),
        # a run directory's own profile.batches / profile.threads (config.yaml) unless flags say otherwise;
        # files alone take the standalone sweep
        backends=backends, device=device or "auto", standalone=run_dir is None, input_shape=parse_shape(input_shape),
    )
    result = profile_targets(targets, settings, progress)
    return result, save(result, run_dir, out)


def save(result: ProfileResult, run_dir: Path | None, out: Path | None) -> list[Path]:
    from distill_export.report import write_profile_outputs

    written = []
    if run_dir is not None and out is None:
        from distill_export.report import write_reports
        from distill_export.rundir import RunDir

        run = RunDir.existing(run_dir)
        run.update_report(latency=result.rows, speedups=result.speedups, profile=result.meta)
        from distill_export.config_edits import accept_hand_edits
        from distill_export.recommend import update_run

        accept_hand_edits(run, run.load_config().to_dict(), ("profile",))  # it ran with config.yaml's profile.*

        written.append(run.file("report.json"))
        if not [s for s in run.missing_stages(None) if s != "profile"]:  # the record is complete once profile is
            update_run(run, "profile")
            write_reports(run)
            written += [run.file("latency.csv"), run.file("report.md"), run.file("report.html")]
        # else (validate stale after a re-export): no report the `report` stage would refuse to make, and no
        # recommendation ranked by parity that is not there (52nd audit F3); cli/profile says what to run
    elif out is not None:
        from distill_export.files import ensure_writable_dir
        from distill_export.output_paths import removed_on_failure

        with removed_on_failure(Path(out)):  # a full disk leaves no half of profile.json, latency.csv, plots
            written += write_profile_outputs(ensure_writable_dir(out), result.rows, result.speedups, result.meta)
    return written
