"""The twentieth audit's WAV and tools rows (issue 24: B1, B4, B5, B6). Each bad input is one line
`error: ...` naming the bad thing, exit 2, no traceback and nothing written:
- B1: a WAV whose odd-sized chunk lacks its pad byte made the stdlib chunk reader raise a bare
  RuntimeError past read_wav (an 87-line traceback, also with --skip-bad-rows); now a bad row;
- B4: kd_gain / compare_methods with an --out whose parent is a file: RunDir.create's ConfigError
  was a traceback (the tools caught errors only around their config checks);
- B5: bench_export --run on a detection run loaded it as classification, then an IndexError;
- B6: bench_export --run on a folder that is no run: the right message, as a traceback."""

from __future__ import annotations

import ast
import importlib.util
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _byo_fixtures import make_manifest
from _cli_checks import snapshot
from distill_export.errors import DataError

REPO = Path(__file__).resolve().parents[1]
NOPAD_REASON = "a chunk's size runs past the end of the RIFF data (a corrupt header, e.g. an odd-sized chunk without its pad byte)"


def _riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunk(tag: bytes, data: bytes, pad: bool = True) -> bytes:
    return tag + struct.pack("<I", len(data)) + data + (b"\0" if pad and len(data) % 2 else b"")


def _wav(pad: bool) -> bytes:
    """PCM 16-bit mono 8 kHz with a 3-byte LIST chunk, its pad byte present or not (B1's file)."""
    pcm = (0.5 * np.sin(np.arange(800) * 0.3) * 32767).astype("<i2").tobytes()
    fmt = _chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16))
    return _riff(fmt, _chunk(b"LIST", b"abc", pad=pad), _chunk(b"data", pcm))


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ----- B1: an odd-sized chunk without its pad byte ---------------------------------------------
def test_b1_an_unpadded_odd_chunk_is_a_data_error_naming_the_file(tmp_path):
    from distill_export.data.audio import read_wav

    good, bad = tmp_path / "padded.wav", tmp_path / "nopad.wav"
    good.write_bytes(_wav(pad=True))
    bad.write_bytes(_wav(pad=False))
    assert read_wav(good)[0].shape == (800,)  # with its pad byte the same file reads
    with pytest.raises(DataError) as exc:
        read_wav(bad)
    assert str(exc.value) == f"cannot read WAV file {bad}: {NOPAD_REASON}"


def test_b1_random_header_mutations_raise_only_data_error(tmp_path):
    """Bytes overwritten, inserted or cut in the headers of valid WAVs: read_wav raises the
    product's DataError or nothing; never the wave module's RuntimeError, struct.error or others."""
    from distill_export.data.audio import read_wav

    sources, rng, path = [_wav(pad=True), _wav(pad=False)], random.Random(20), tmp_path / "m.wav"
    for _ in range(300):
        b = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(min(60, len(b)))
            kind = rng.randrange(3)
            if kind == 0:
                b[where:where + 4] = rng.randrange(2 ** 32).to_bytes(4, "little")
            elif kind == 1:
                b[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 5)))
            elif len(b) > 9:  # cut: the file ends inside a header or the samples
                del b[rng.randrange(8, len(b)):]
        path.write_bytes(bytes(b))
        try:
            read_wav(path)
        except DataError:
            pass


def _nopad_manifest(root: Path) -> Path:
    manifest = make_manifest(root, modalities=("image", "audio"))
    (root / "wav" / "cat_0.wav").write_bytes(_wav(pad=False))  # row 1: CSV line 2
    return manifest


def test_b1_the_unpadded_wav_is_a_bad_row_named_by_its_line(tmp_path):
    from distill_export.cli import app

    manifest, out = _nopad_manifest(tmp_path / "data"), tmp_path / "tt"
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["train-teacher", "--data", str(manifest), "--out", str(out), "-q",
                                      "--teacher-epochs", "1", "--label-fraction", "1.0"])
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    lines = [ln for ln in result.output.splitlines() if ln.strip() and "held decoded" not in ln]
    assert lines == [f"error: {manifest}:2: bad row: cannot read WAV file {tmp_path / 'data' / 'wav' / 'cat_0.wav'}: "
                     f"{NOPAD_REASON}; fix it or pass --skip-bad-rows"], lines
    assert snapshot(tmp_path) == before and not out.exists()


def test_b1_with_skip_bad_rows_the_unpadded_wav_row_is_skipped(tmp_path):
    from distill_export.config import DataConfig
    from distill_export.data.manifest import build_manifest_dataset

    manifest = _nopad_manifest(tmp_path / "data")
    data = build_manifest_dataset(DataConfig(source=str(manifest), skip_bad_rows=True, label_fraction=1.0), seed=0)
    assert len(data.train) == 3 * 4 - 1  # cat_0 is a training row


# ----- B4-B6: the tools ------------------------------------------------------------------------
def _run_tool(name: str, argv: list[str], monkeypatch, capsys) -> str:
    """Run tools/NAME.py's main in this process; assert exit 2 and one `error:` line on stderr."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2
    return _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("tool, argv, first", [("kd_gain", ["--seeds", "0"], "lf0.05-seed0"),
                                                ("compare_methods", [], "teacher")])
def test_b4_an_out_below_a_file_is_one_line(tmp_path, monkeypatch, capsys, tool, argv, first):
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    line = _run_tool(tool, [*argv, "--out", str(tmp_path / "afile" / "x")], monkeypatch, capsys)
    # refused before any work since the 49th round (it was `... cannot be written: Not a directory`, at the first write)
    assert line == (f"error: --out {tmp_path / 'afile' / 'x'}: {tmp_path / 'afile'} is a file, not a folder, so the "
                    "folder cannot be made; choose another --out"), line
    assert snapshot(tmp_path) == before


def test_b5_bench_export_refuses_a_detection_run_before_any_work(tmp_path, monkeypatch, capsys):
    run = tmp_path / "det"
    run.mkdir()
    (run / "config.yaml").write_text("task: detection\n")  # refused on the config alone: nothing else is read
    before, out = snapshot(tmp_path), tmp_path / "be.json"
    line = _run_tool("bench_export", ["--run", str(run), "--seconds", "0.1", "--rounds", "1", "--out", str(out)],
                     monkeypatch, capsys)
    assert line == f"error: {run} is a detection run; bench_export measures classification students", line
    assert snapshot(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("tool, argv", [("bench_export", ["--run", "{run}", "--out", "{tmp}/be.json"]),
                                        ("bench_profile", ["{run}", "--out", "{tmp}/prof"])])
def test_b6_a_run_that_is_no_run_directory_is_one_line(tmp_path, monkeypatch, capsys, tool, argv):
    run = tmp_path / "nonexist"
    line = _run_tool(tool, [a.format(run=run, tmp=tmp_path) for a in argv], monkeypatch, capsys)
    assert line.startswith(f"error: {run} is not a run directory (no config.yaml)"), line
    assert snapshot(tmp_path) == {}


SCRIPTS = sorted(p.stem for p in (REPO / "tools").glob("*.py")  # the scripts, not their helper modules
                 if 'if __name__ == "__main__"' in p.read_text() and "\ndef main(" in p.read_text()
                 and p.stem not in {"mutation_check", "run_mutmut"})  # test harnesses


@pytest.mark.parametrize("name", SCRIPTS)
def test_b4_every_tool_main_runs_under_one_line_errors(name):
    """B4's cause was handling around parts of a tool's work only; each main is wrapped whole."""
    tree = ast.parse((REPO / "tools" / f"{name}.py").read_text())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    assert any(isinstance(d, ast.Name) and d.id == "one_line_errors" for d in main.decorator_list), name
