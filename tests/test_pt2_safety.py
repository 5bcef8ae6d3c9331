"""A .pt2 teacher must never run code: every entry torch.export.load would unpickle is refused.

Each hostile archive is a real program saved by torch.export.save, then edited so one entry
is a pickle whose __reduce__ creates a marker file. The control test proves the payload is
live under a plain torch.export.load; every other test proves the marker never appears.
"""

from __future__ import annotations

import builtins
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import CheckpointError
from distill_export.nets.external import load_export_program
from distill_export.nets.pt2_safety import check_pt2_archive

runner = CliRunner()
PROFILE_FAST = ["--batch", "1", "--threads", "1", "--warmup", "0.01", "--min-time", "0.02", "--min-iters", "3",
                "--quiet"]


class Payload:
    """Unpickling this creates `marker` (a stand-in for any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class Tiny(nn.Module):
    """Takes inputs by modality name, returns (features, logits); has a lifted constant."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64 + 16, 3)
        self.register_buffer("scale", torch.ones(3))

    def forward(self, image, audio):
        feats = torch.cat([image.flatten(1), audio.flatten(1)], 1)
        return feats, self.fc(feats) * self.scale + torch.tensor([0.0, 0.1, 0.2])


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1)
    example = {"image": torch.randn(2, 1, 8, 8), "audio": torch.randn(2, 1, 4, 4)}
    ep = torch.export.export(Tiny().eval(), (), example, dynamic_shapes={m: {0: batch} for m in example})
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    torch.export.save(ep, str(path))
    return path


def rewrite(src: Path, dst: Path, edit=lambda rel, data: data, add: dict | None = None, root: str | None = None) -> Path:
    """Copy a .pt2, passing each entry (name relative to the archive root) through edit;
    edit returns new bytes or None to drop the entry; `add` adds entries."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        infos = z.infolist()
        prefix = infos[0].filename.split("/", 1)[0] + "/"
        for info in infos:
            rel = info.filename[len(prefix):]
            data = edit(rel, z.read(info))
            if data is not None:
                out.writestr((root if root is not None else prefix) + rel, data)
        for rel, data in (add or {}).items():
            out.writestr((root if root is not None else prefix) + rel, data)
    return dst


def _set_config(rel_config: str, key_index: int = 0, **changes):
    def edit(rel, data):
        if rel != rel_config:
            return data
        cfg = json.loads(data)
        key = list(cfg["config"])[key_index]
        cfg["config"][key].update(changes)
        return json.dumps(cfg).encode()
    return edit


def _path_of(src: Path, rel_config: str, key_index: int = 0) -> str:
    with zipfile.ZipFile(src) as z:
        name = next(n for n in z.namelist() if n.endswith(rel_config))
        return list(json.loads(z.read(name))["config"].values())[key_index]["path_name"]


def hostile(kind: str, clean: Path, folder: Path, marker: Path) -> Path:
    """Build one hostile archive of the given kind from the clean program."""
    evil = pickle.dumps(Payload(marker))
    evil += b"\0" * (-len(evil) % 8)  # bytes after STOP are ignored; torch wants whole elements
    dst = folder / f"{kind}.pt2"
    if kind == "weight_use_pickle":
        weight = "data/weights/" + _path_of(clean, "model_weights_config.json")
        cfg = _set_config("data/weights/model_weights_config.json", use_pickle=True)
        return rewrite(clean, dst, lambda rel, d: evil if rel == weight else cfg(rel, d))
    if kind == "constant_use_pickle":
        const = "data/constants/" + _path_of(clean, "model_constants_config.json")
        cfg = _set_config("data/constants/model_constants_config.json", use_pickle=True)
        return rewrite(clean, dst, lambda rel, d: evil if rel == const else cfg(rel, d))
    if kind in ("opaque_constant", "custom_obj_constant"):
        name = "opaque_obj_0" if kind == "opaque_constant" else "custom_obj_0"
        cfg = _set_config("data/constants/model_constants_config.json", path_name=name)
        return rewrite(clean, dst, cfg, add={f"data/constants/{name}": evil})
    if kind == "pickled_sample_inputs":
        return rewrite(clean, dst, lambda rel, d: evil if rel == "data/sample_inputs/model.pt" else d)
    if kind == "legacy_weights_file":
        return rewrite(clean, dst, lambda rel, d: None if rel == "data/weights/model_weights_config.json" else d,
                       add={"data/weights/model.pt": evil})
    if kind == "aotinductor_code":
        return rewrite(clean, dst, add={"data/aotinductor/model/model.so": b"\x7fELF"})
    if kind == "legacy_zip_format":  # torch's pre-2.7 layout: entries at the zip's top level
        return rewrite(clean, dst, root="", add={"version": b"8.0", "serialized_state_dict.json": evil})
    if kind == "path_traversal":
        cfg = _set_config("data/weights/model_weights_config.json", path_name="../constants/tensor_0")
        return rewrite(clean, dst, cfg)
    raise ValueError(kind)


KINDS = ["weight_use_pickle", "constant_use_pickle", "opaque_constant", "custom_obj_constant",
         "pickled_sample_inputs", "legacy_weights_file", "aotinductor_code", "legacy_zip_format", "path_traversal"]
# Under a plain torch.export.load these run the payload (the control test shows it).
LIVE = ["weight_use_pickle", "constant_use_pickle", "opaque_constant", "pickled_sample_inputs"]


@pytest.fixture(scope="module")
def plain_loads(clean, tmp_path_factory) -> dict:
    """Each LIVE archive loaded by a plain torch.export.load, all in one subprocess (one torch
    import instead of one per kind; the unpickled state cannot leak into this process);
    kind -> whether its payload ran (its own marker file exists)."""
    folder = tmp_path_factory.mktemp("plain_loads")
    markers = {kind: folder / f"MARKER_{kind}" for kind in LIVE}
    paths = [str(hostile(kind, clean, folder, markers[kind])) for kind in LIVE]
    code = (f"import torch\nfor path in {paths!r}:\n    try:\n        torch.export.load(path)\n"
            "    except Exception:\n        pass\n")
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    return {kind: marker.exists() for kind, marker in markers.items()}


@pytest.mark.parametrize("kind", LIVE)
def test_control_payload_runs_under_plain_torch_export_load(kind, plain_loads):
    """Without our check, torch.export.load runs the code: the archives are real attacks."""
    assert plain_loads[kind], f"{kind}: the payload did not run under plain torch.export.load"


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_archive_is_refused_and_runs_nothing(kind, clean, tmp_path):
    marker = tmp_path / "MARKER"
    path = hostile(kind, clean, tmp_path, marker)
    with pytest.raises(CheckpointError) as exc:
        load_export_program(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    assert not marker.exists()


def test_clean_program_still_loads(clean):
    check_pt2_archive(clean)
    teacher = load_export_program(clean)
    assert teacher.modality_names == ["image", "audio"]
    assert teacher.input_shapes == {"image": (1, 8, 8), "audio": (1, 4, 4)}
    x = {"image": torch.randn(3, 1, 8, 8), "audio": torch.randn(3, 1, 4, 4)}
    feats, logits = teacher.forward_features(x)
    ref_feats, ref_logits = torch.export.load(str(clean)).module()(**x)  # our own file: trusted
    assert logits.shape == (3, 3) and feats.shape == (3, 80)
    torch.testing.assert_close(logits, ref_logits, atol=0, rtol=0)
    torch.testing.assert_close(feats, ref_feats, atol=0, rtol=0)


def test_the_shipped_exporter_passes_the_check(tmp_path):
    """export_teacher_program (what users are told to use) writes an archive the check accepts."""
    from _byo_fixtures import synthetic_dataset
    from distill_export.nets.external import export_teacher_program
    from distill_export.nets.teacher import FusionTeacher
    from distill_export.nets.model_io import load_teacher
    from distill_export.train_teacher import teacher_kwargs

    data = synthetic_dataset()
    torch.manual_seed(0)
    fusion = FusionTeacher(**teacher_kwargs(data, width=4, modality_dropout=0.0)).eval()
    path = export_teacher_program(fusion, {m: v[:2] for m, v in data.train.inputs.items()}, tmp_path / "t.pt2")
    check_pt2_archive(path)
    assert sorted(load_teacher(path, data).modality_names) == ["audio", "image"]


def test_torch_load_is_weights_only_inside_the_guard(tmp_path):
    from distill_export.nets.pt2_safety import weights_only_loads

    marker = tmp_path / "MARKER"
    blob = tmp_path / "evil.pt"
    torch.save({"x": Payload(marker)}, blob)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(blob, weights_only=False)  # the guard overrides the caller's False
    assert not marker.exists()
    assert torch.load  # restored


# ----- every command that takes a .pt2 ----------------------------------------------------------
@pytest.fixture
def evil(clean, tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    return hostile("weight_use_pickle", clean, tmp_path, marker), marker


@pytest.mark.parametrize("kind", KINDS)
def test_profile_refuses_hostile_pt2(kind, clean, tmp_path):
    marker = tmp_path / "MARKER"
    path = hostile(kind, clean, tmp_path, marker)
    result = runner.invoke(app, ["profile", str(path), *PROFILE_FAST])
    line = one_line_error(result, 2)
    assert str(path) in line and "refused" in line
    assert not marker.exists()


def test_profile_refuses_hostile_pt2_in_a_real_process(evil):
    """The installed entry point, as a user runs it: one line on stderr, exit 2, no marker."""
    path, marker = evil
    proc = subprocess.run([sys.executable, "-m", "distill_export.cli", "profile", str(path), *PROFILE_FAST],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in lines[0], lines
    assert not marker.exists()


@pytest.mark.parametrize("command", ["run", "train-teacher"])
def test_teacher_option_refuses_hostile_pt2(command, evil, tmp_path):
    path, marker = evil
    out = tmp_path / "out"
    result = runner.invoke(app, [command, "--teacher", str(path), "--out", str(out), "--quiet"])
    line = one_line_error(result, 2)
    assert "use_pickle" in line
    assert not marker.exists()
    assert not out.exists()  # refused before the run directory is made


def test_stage_command_refuses_hostile_pt2_from_run_config(evil, tmp_path, tiny_config_file):
    """A run directory whose config.yaml names a hostile teacher: `distill RUN` loads it."""
    import yaml

    from distill_export.config import load_config

    path, marker = evil
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config("avdigits", tiny_config_file, {"teacher.path": str(path)})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    before = snapshot(run)
    result = runner.invoke(app, ["distill", str(run), "--quiet"])
    line = one_line_error(result, 2)
    assert "use_pickle" in line
    assert not marker.exists()
    assert snapshot(run) == before


def test_profile_runs_a_clean_pt2(clean):
    result = runner.invoke(app, ["profile", str(clean), *PROFILE_FAST])
    assert result.exit_code == 0, result.output
    assert "teacher" in result.output or "clean" in result.output


@pytest.mark.parametrize("kind", ["weight_use_pickle", "constant_use_pickle"])
def test_pickled_payload_is_refused_by_the_archive_check_itself(kind, clean, tmp_path):
    """The inspection names use_pickle, before torch.export.load runs at all; the weights-only
    guard around the load is only the second line (it alone would also refuse these files,
    which is why test_hostile_archive_is_refused_and_runs_nothing cannot tell the two apart)."""
    path = hostile(kind, clean, tmp_path, tmp_path / "MARKER")
    with pytest.raises(CheckpointError, match=r"stored as a pickle \(use_pickle: True\)"):
        check_pt2_archive(path)
    assert not (tmp_path / "MARKER").exists()
