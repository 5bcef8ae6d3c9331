"""Shared fixtures. `tiny_run` is one reduced end-to-end run (seconds, not minutes) that
tests of later stages reuse instead of training again.

The suite runs on pytest-xdist (pyproject's addopts: `-n auto --dist loadfile`): one worker per
core, each single-threaded, the files with slow tests handed out first, `tiny_run` built once
for all workers. `-n 0` runs it in one process, as before."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# One worker per core, one thread per worker: torch's default (one intra-op thread per core
# in every worker) would put 2 workers x 2 threads on 2 cores. Set before torch is imported in
# this worker, and inherited by the subprocesses tests start (an explicit setting is kept).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_CONFIG = {
    # 1,000 of the demo's 3,500 training rows (100 per digit) and a half-width teacher: the
    # stages' code paths at a fraction of the cost; validation and test stay whole. Two teacher
    # epochs so the teacher still learns (val accuracy ~0.3, not chance) (issue 25: suite time).
    "data": {"max_train_rows": 1000},
    "teacher": {"epochs": 2, "width": 8},
    "distill": {"epochs": 1},
    "profile": {"batches": [1], "threads": [1], "warmup_s": 0.01, "min_time_s": 0.05, "min_iters": 5},
    # The TorchScript exporter: ~0.2 s a model where dynamo takes ~3.5 s. The default (dynamo) is
    # covered where export itself is under test: test_export, test_pt2_graph, test_detectors.
    "export": {"exporter": "torchscript"},
}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist (-p no:xdist) it is not an error
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: the cores this process may use (its CPU affinity), not every core of the host;
    PYTEST_XDIST_AUTO_NUM_WORKERS still wins, as it does in xdist's own hook."""
    override = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    return int(override) if override and override.isdigit() else _cores()


def pytest_addoption(parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow tier (tests marked slow: whole runs in several processes, kill and "
                          "resume, torchrun, a fresh venv); CI and the README's test command do")


def pytest_report_header(config) -> str:
    return ("slow tier: included (--slow)" if config.getoption("--slow")
            else "slow tier: deselected; add --slow to run it (CI does)")


def pytest_collection_modifyitems(config, items) -> None:
    """Without --slow, tests marked slow are deselected: `python -m pytest -q` is the quick
    tier (issue 25: <= 150 s on 2 cores); `--slow` runs everything. Under xdist, slow tests
    come first, so their files are handed out first (`--no-loadscope-reorder` keeps the files
    in order of their first test): longest first is the classic schedule, the quick files fill
    the gaps instead of one slow file ending the session alone. `-n 0` keeps the collected order."""
    if not config.getoption("--slow"):
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
            config.hook.pytest_deselected(items=slow)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow ones first


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    return path


def _run_tiny(out: Path, config_file: Path) -> None:
    from typer.testing import CliRunner

    from distill_export.cli import app

    result = CliRunner().invoke(app, ["run", "--config", str(config_file), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config_file) -> Path:
    """A complete run directory from `distill-export run` on a reduced demo config. Read-only:
    tests that change a run work on a copy. Under xdist the first worker to need it builds it
    in the session's shared temp folder (under a file lock) and the others reuse it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp("runs") / "tiny"
        _run_tiny(out, tiny_config_file)
        return out
    from filelock import FileLock  # a torch dependency

    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, above this worker's popen-gwK/
    # the marker names this session (xdist's run id): a folder kept by --basetemp is never reused
    out, done = shared / "tiny_run", shared / f"tiny_run.done-{os.environ.get('PYTEST_XDIST_TESTRUNUID', '')}"
    with FileLock(str(shared / "tiny_run.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker's failed attempt: build it afresh
            _run_tiny(out, tiny_config_file)
            done.touch()
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A writable copy of `tiny_run` (RUN/...) for a test that changes a run."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture(autouse=True)
def _no_interruption_left_over():
    """A test that raises SIGTERM's or Ctrl-C's handler in this process (and catches what it
    raises) leaves it unreported; a real process would have ended. The next test starts clean."""
    from distill_export import interrupts

    yield
    interrupts.reported_all()
