"""Property-based tests (hypothesis) of the parsers a user's input reaches first (issue 24 item 9):
the manifest reader (CSV and JSONL), the config loader (--config YAML through safe_yaml and
validate_config) and the CLI's numeric options (run, profile, validate --gate).

Properties, for every generated input:
- never a traceback: only DistillExportError (one line and exit 2 from the CLI) or a click
  usage error (exit 2);
- never a success on garbage: every generated manifest holds a row that must be refused, every
  generated config file a value that must be refused, every CLI call a missing input;
- nothing changed outside the run directory (hashes of every file around, before and after);
- a config that loads is a valid config (it reloads and passes validate_config).

derandomize=True: the same examples on every machine, so CI is reproducible; database=None:
no .hypothesis folder is written. docs/reliability.md lists the cases."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from _cli_checks import snapshot
from distill_export.cli import app
from distill_export.cli.guard import one_line
from distill_export.config import RunConfig, config_from_dict, load_config
from distill_export.config_checks import validate_config
from distill_export.data import load_dataset
from distill_export.errors import DistillExportError

EXAMPLES = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
runner = CliRunner()


@pytest.fixture
def folder(tmp_path_factory, monkeypatch) -> Path:
    """Each test's folder, also its working directory: one real 8x8 PNG (ok.png, also one level
    up) that generated cells may name; each example rewrites its one input file here."""
    root = tmp_path_factory.mktemp("props")
    for where in (root, root.parent):
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(where / "ok.png")
    monkeypatch.chdir(root)  # a default runs/ folder, say, would land here and be seen
    return root


def refused(call) -> DistillExportError:
    """call() raised a DistillExportError (the CLI's one line, exit 2), nothing else."""
    try:
        call()
    except DistillExportError as exc:
        assert "\n" not in one_line(str(exc))
        event(_kind(str(exc)))  # --hypothesis-show-statistics: which checks the examples reached
        return exc
    raise AssertionError("garbage was accepted")


def _kind(message: str) -> str:
    """The message without its paths and values: 'bad row', 'no label column', ..."""
    import re

    return re.sub(r"(/\S+|'[^']*'|\"[^\"]*\"|\d+)", "_", message)[:60]


def unchanged(folder: Path):
    """(hash of every file, every path) under folder, the test's input folder and working
    directory: a command may write nothing beside its input or where it was started."""
    return snapshot(folder), sorted(str(p) for p in folder.rglob("*"))


# ----- the manifest reader ------------------------------------------------------------------------
COLUMNS = ["image", "audio", "text", "video", "label", "split", "id", "photo_image", "caption_text"]
CELLS = ["ok.png", "../ok.png", "missing.png", "x.wav", ".", "train", "val", "test", "calibration", "",
         "0", "1", "1.5", "-1", "nan", "cat", "a b", '"', "\\", "/etc/passwd", "ok.png ", "ÿ", "0x10"]
cell = st.one_of(st.sampled_from(CELLS), st.sampled_from(CELLS), st.text(max_size=12))  # 2:1 known cells
# Most headers pass the header checks (a label and a modality column, no duplicates), so the
# examples reach the row, cell, decoding and label checks (no video column: it would clash with
# the image column's name for its target frame); a quarter are anything at all.
good_header = st.lists(st.sampled_from([c for c in COLUMNS if c != "video"]), unique=True, max_size=4).map(
    lambda cols: ["image", "label", *[c for c in cols if c not in ("image", "label")]])
any_header = st.lists(st.one_of(st.sampled_from(COLUMNS), st.text(max_size=8)), max_size=5).map(
    lambda cols: ["image", *cols])  # a first line that is not blank: it stays the header
header = st.one_of(good_header, good_header, good_header, any_header)


@st.composite
def csv_manifest(draw) -> list[list[str]]:
    """A header, rows of mostly its width (some shorter or longer), and one row two fields too
    long at a random place: a bad row, so the manifest is garbage whatever else it holds."""
    columns = draw(header)
    width = st.one_of(st.just(len(columns)), st.just(len(columns)), st.integers(0, len(columns) + 2))
    rows = draw(st.lists(width.flatmap(lambda n: st.lists(cell, min_size=n, max_size=n)), max_size=8))
    at = draw(st.integers(0, len(rows)))
    return [columns, *rows[:at], ["ok.png"] * (len(columns) + 2), *rows[at:]]


def _load(path: Path):
    data = RunConfig().data
    data.source = str(path)
    return load_dataset(data, seed=0)


@EXAMPLES
@given(table=csv_manifest(), bom=st.booleans())
def test_csv_manifests_of_garbage_are_refused_in_one_line(folder, table, bom):
    """Any header and cells (quotes, commas, newlines, NUL written through csv)."""
    text = io.StringIO()
    csv.writer(text).writerows(table)
    path = folder / "m.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.getvalue().encode("utf-8", "surrogatepass"))
    before = unchanged(folder)
    refused(lambda: _load(path))
    assert unchanged(folder) == before


json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
                          | st.sampled_from(CELLS), lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
json_cell = st.one_of(st.sampled_from(CELLS), st.sampled_from(CELLS), json_value)
json_line = st.one_of(
    header.flatmap(lambda cols: st.fixed_dictionaries({c: json_cell for c in cols})).map(json.dumps),
    header.flatmap(lambda cols: st.fixed_dictionaries({c: json_cell for c in cols})).map(json.dumps),
    st.dictionaries(st.text(max_size=6), json_cell, max_size=4).map(json.dumps),
    json_value.map(json.dumps),
    st.text(max_size=20).map(lambda t: t.replace("\n", " ").replace("\r", " ")),  # not JSON at all
)


@EXAMPLES
@given(lines=st.lists(json_line, max_size=8), at=st.integers(0, 8))
def test_jsonl_manifests_of_garbage_are_refused_in_one_line(folder, lines, at):
    """Objects with any keys and values (lists, dicts, NaN, huge ints), other JSON values and
    non-JSON lines; one line that is not JSON keeps the manifest garbage."""
    lines = [*lines[:at], '{"image": "ok.png", "label": ', *lines[at:]]
    path = folder / "m.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    before = unchanged(folder)
    refused(lambda: _load(path))
    assert unchanged(folder) == before


# ----- the config loader --------------------------------------------------------------------------
def _keys(config=None, prefix="") -> list[str]:
    import dataclasses

    config = config or RunConfig()
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        keys += _keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return keys


KEYS = _keys()
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k})
yaml_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
    | st.sampled_from(["yes", "no", "1e999", "-inf", ".nan", "0x1F", "1_000", "~", "[]", "{}", "cpu", "late"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
config_key = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=10))
config_doc = st.dictionaries(config_key, yaml_value, max_size=6)
# A value each of these keys must refuse, whatever else the file says (it is applied last).
POISON = st.one_of(
    st.tuples(st.sampled_from(["distill.epochs", "teacher.epochs", "profile.min_iters"]),
              st.sampled_from([float("nan"), -1, 0, 2**80, 1.5, "many", True, [1], {"a": 1}, float("inf")])),
    st.tuples(st.just("seed"),  # 0 is a seed (numpy's range starts there)
              st.sampled_from([float("nan"), -1, 2**80, 1.5, "many", True, [1], {"a": 1}, float("inf")])),
    st.tuples(st.sampled_from(["distill.lr", "distill.temperature", "data.label_fraction", "validate.fp32_max_abs"]),
              st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, 1e300, "x", [0.1], False])),
)


def _write_config(folder: Path, doc) -> Path:
    path = folder / "c.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8",
                    errors="surrogatepass")
    return path


@EXAMPLES
@given(doc=config_doc, poison=POISON)
def test_config_files_with_a_bad_value_are_refused_in_one_line(folder, doc, poison):
    key, bad = poison
    doc = {k: v for k, v in doc.items() if k != key}
    doc[key] = bad  # last: nothing after it can replace it
    path = _write_config(folder, doc)
    before = unchanged(folder)
    refused(lambda: load_config(None, path))
    assert unchanged(folder) == before


@EXAMPLES
@given(doc=st.one_of(config_doc, st.text(max_size=60)))
def test_any_config_file_loads_as_a_valid_config_or_is_refused(folder, doc):
    """Random YAML mappings and random text: a config that loads is one validate_config accepts
    on a reload, with every number finite."""
    path = _write_config(folder, doc)
    try:
        config = load_config(None, path)
    except DistillExportError as exc:
        assert "\n" not in one_line(str(exc))
        return
    again = config_from_dict(config.to_dict())
    validate_config(again)
    numbers = [v for section in config.to_dict().values() for v in
               (section.values() if isinstance(section, dict) else [section]) if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers)


# ----- the CLI's numeric options ----------------------------------------------------------------
RUN_FLAGS = ["--epochs", "--teacher-epochs", "--seed", "--rounds", "--temperature", "--alpha", "--beta",
             "--label-fraction", "--nproc"]
PROFILE_FLAGS = ["--warmup", "--min-time", "--min-iters", "--batch", "--threads"]
GATES = ["fp32_max_abs", "fp32_agreement", "fp16_agreement", "int8_agreement", "int8_max_accuracy_drop"]
number_text = st.one_of(
    st.integers(-2**70, 2**70).map(str), st.floats().map(repr), st.text(max_size=10),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "-0", "1,2", ",", "1,,2", "0x10", "1_0", " 1", "½", "٣"]),
)


def _cli_refused(args: list[str], around: Path) -> None:
    before = unchanged(around)
    result = runner.invoke(app, args)
    text = result.output or ""
    assert result.exit_code == 2, (args, result.exit_code, text, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in text
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 or "Invalid value" in text or "No such option" in text, (args, text)
    assert unchanged(around) == before


@pytest.fixture
def fake_run(folder) -> Path:
    """A run directory as far as validate's checks before any work can tell (no data, no models)."""
    run = folder / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(RunConfig().to_dict(), sort_keys=False))
    (run / "report.json").write_text(json.dumps({"exports": {}}))
    return run


@EXAMPLES
@given(command=st.sampled_from(["run", "profile", "validate"]), pick=st.integers(0, 100), value=number_text)
def test_numeric_options_never_give_a_traceback_or_success(folder, fake_run, command, pick, value):
    """Each call misses an input (a manifest, a model, the run's exports), so whatever the value,
    it ends in exit 2: refused for the value, or, past it, for the missing input."""
    value = value.replace("\x00", "")  # argv cannot hold NUL
    missing = str(folder / "no_such_dir" / "m.csv")
    if command == "run":
        args = ["run", f"{RUN_FLAGS[pick % len(RUN_FLAGS)]}={value}", "--data", missing,
                "--out", str(folder / "no_such_dir" / "r"), "--device", "cpu"]
    elif command == "profile":
        args = ["profile", str(folder / "no_such_dir" / "m.onnx"), f"{PROFILE_FLAGS[pick % len(PROFILE_FLAGS)]}={value}"]
    else:
        args = ["validate", str(fake_run), "--gate", f"{GATES[pick % len(GATES)]}={value}"]
    _cli_refused(args, folder)
