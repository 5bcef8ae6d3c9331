"""The runtime-only install (requirements-runtime.txt: numpy, onnxruntime, typer, rich,
pyyaml; no torch, no matplotlib) profiles and validates ONNX files.

Always on: the CLI in a subprocess of this interpreter with torch and the other heavy
packages made unimportable (a sitecustomize that raises ImportError for them), so any
import path from the CLI (distill_export/cli/) that reaches torch fails the test. Slow: a real virtual
environment without torch, built from PyPI (skipped when the packages cannot be fetched)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "triton", "onnx", "onnxscript", "onnxslim", "onnxconverter_common",
           "matplotlib", "sklearn", "mlxtend", "safetensors", "PIL")
FAST = ["--batch", "1,2", "--threads", "1", "--warmup", "0.01", "--min-time", "0.05", "--min-iters", "5", "-q"]

SHIM = textwrap.dedent(f"""
    import sys

    BLOCKED = {BLOCKED!r}

    class BlockHeavyImports:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (blocked: runtime-only test)", name=name)
            return None

    sys.meta_path.insert(0, BlockHeavyImports())
""")


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


def _blocked(tmp_path: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=tmp_path)


def _check_profiled_without_torch(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    measured = {(r["model"], r["format"], r["batch"]) for r in report["latency"] if "p50_ms" in r}
    onnx_formats = [f for f, art in report["exports"].items() if art["runtime"] == "onnxruntime"]
    assert "onnx" in onnx_formats
    expected = {("student", f, b) for f in onnx_formats for b in (1, 2)}
    if "path" in (report.get("teacher_exports") or {}).get("onnx", {}):  # the teacher's own ONNX runs too
        expected |= {("teacher", "onnx", b) for b in (1, 2)}
    assert measured == expected
    skipped = {r["model"]: r["skipped"] for r in report["latency"] if "skipped" in r and r["backend"] == "pytorch-cpu"}
    assert set(skipped) == {"teacher", "student"} and all("torch is not installed" in s for s in skipped.values())
    others = [r for r in report["latency"] if "skipped" in r and r["backend"] != "pytorch-cpu"]
    assert all(r["backend"] == "openvino-cpu" and "OpenVINO is not installed" in r["skipped"] for r in others)
    assert "plots skipped: matplotlib is not installed" in (run / "report.html").read_text()
    assert (run / "latency.csv").is_file()


def test_the_shim_really_blocks_torch(tmp_path):
    result = _blocked(tmp_path, "-c", "import torch")
    assert result.returncode != 0 and "blocked: runtime-only test" in result.stderr


@pytest.mark.slow
def test_profile_and_validate_work_without_torch(run_copy, tmp_path):
    result = _blocked(tmp_path, "-m", "distill_export.cli", "profile", str(run_copy), *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    _check_profiled_without_torch(run_copy)

    result = _blocked(tmp_path, "-m", "distill_export.cli", "validate", str(run_copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout

    result = _blocked(tmp_path, "-m", "distill_export.cli", "report", str(run_copy))
    assert result.returncode == 0, result.stdout + result.stderr

    out = tmp_path / "loose"
    result = _blocked(tmp_path, "-m", "distill_export.cli", "profile", str(run_copy / "student.onnx"),
                      "--out", str(out), *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((out / "profile.json").read_text())["latency"]
    assert len([r for r in rows if r["backend"] == "onnxruntime-cpu"]) == 2


def test_asking_for_torch_without_it_names_what_to_install(run_copy, tmp_path):
    result = _blocked(tmp_path, "-m", "distill_export.cli", "profile", str(run_copy), "--backend", "torch-cpu", *FAST)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "pip install torch" in result.stderr
    assert "Traceback" not in result.stderr


def _pip(venv: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """This interpreter's pip installing into the venv (`--python`): the venv is made without
    pip, which saves seeding a pip into it (~3 s of the test)."""
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "-q",
                           "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="venv layout differs on Windows")
def test_real_venv_without_torch(run_copy, tmp_path):
    """The README's edge install line in a fresh venv, then `profile` and `validate` there."""
    start = time.perf_counter()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    try:
        deps = _pip(venv, "install", "-r", str(REPO / "requirements-runtime.txt"), timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("pip could not fetch the runtime requirements in time (no network?)")
    assert "no such option: --python" not in deps.stderr, "pip >= 22.3 is needed (pip --python)"  # not a network skip
    if deps.returncode != 0:
        pytest.skip(f"pip could not install the runtime requirements (no network?): {deps.stderr.strip()[-300:]}")
    # Install a copy of the sources, so the build leaves nothing in the working tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements-runtime.txt", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    for folder in ("distill_export", "models"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        own = _pip(venv, "install", "--no-deps", str(src), timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("pip could not build the package in time (build backend not fetchable?)")
    if own.returncode != 0:
        pytest.skip(f"pip could not build the package (no network for its build backend?): {own.stderr.strip()[-300:]}")

    python, cli = venv / "bin" / "python", venv / "bin" / "distill-export"
    for heavy in ("torch", "matplotlib", "onnx"):
        probe = subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"{heavy} is importable in the runtime-only venv"
    result = subprocess.run([str(cli), "profile", str(run_copy), *FAST], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    _check_profiled_without_torch(run_copy)
    result = subprocess.run([str(cli), "validate", str(run_copy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    print(f"runtime-only venv test took {time.perf_counter() - start:.1f} s")
