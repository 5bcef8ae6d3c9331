"""A .pt2 whose archive is clean but whose graph touches files is refused before it runs.

The hostile programs are real: a program exported by torch.export, whose graph gains an
``aten.from_file(target, shared=True)`` node and an in-place fill of it, saved with
torch.export.save. The control test shows that running it overwrites the target file; every
other test shows the target unchanged. The models the product exports must all still load.
"""

from __future__ import annotations

import operator
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from _cli_checks import one_line_error
from distill_export.cli import app
from distill_export.errors import CheckpointError
from distill_export.nets.external import load_export_program
from distill_export.nets.pt2_safety import check_pt2_archive

runner = CliRunner()
PROFILE_FAST = ["--batch", "1", "--threads", "1", "--warmup", "0.01", "--min-time", "0.02", "--min-iters", "3",
                "--quiet"]
ORIGINAL = b"the user's file, which a model must never write\n"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, image):
        return image.flatten(1), self.fc(image.flatten(1))


def _export(module=None) -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    return torch.export.export((module or Tiny()).eval(), (), {"image": torch.randn(2, 1, 8, 8)},
                               dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1)}})


def _add(ep, target, args, kwargs=None, val=None) -> torch.fx.Node:
    """Append a call_function node before the output, with a fake value (the verifier wants one)."""
    graph = ep.graph
    out = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(out):
        node = graph.call_function(target, args, kwargs or {})
    fake_mode = next(n.meta["val"] for n in graph.nodes if n.op == "placeholder").fake_mode
    with fake_mode:
        node.meta["val"] = val() if callable(val) else torch.empty(len(ORIGINAL), dtype=torch.uint8)
    return node


def hostile(kind: str, folder: Path, target: Path) -> Path:
    """A program from torch.export whose graph was edited as a hostile user would."""
    ep = _export()
    image = next(n for n in ep.graph.nodes if n.name == "image")
    weight = next(n for n in ep.graph.nodes if n.name == "p_fc_weight")
    if kind == "from_file_fill":  # the attack: map the file, overwrite its bytes
        mapped = _add(ep, torch.ops.aten.from_file.default, (str(target), True, len(ORIGINAL)),
                      {"dtype": torch.uint8})
        _add(ep, torch.ops.aten.fill_.Scalar, (mapped, 65))
    elif kind == "from_file_read":
        _add(ep, torch.ops.aten.from_file.default, (str(target), False, len(ORIGINAL)), {"dtype": torch.uint8})
    elif kind == "fill_input":  # in place into the caller's batch
        _add(ep, torch.ops.aten.fill_.Scalar, (image, 0.0), val=lambda: torch.empty(2, 1, 8, 8))
    elif kind == "fill_input_view":  # the same, through a view
        view = _add(ep, torch.ops.aten.view.default, (image, [-1]), val=lambda: torch.empty(128))
        _add(ep, torch.ops.aten.fill_.Scalar, (view, 0.0), val=lambda: torch.empty(128))
    elif kind == "fill_input_unsafe_view":  # a view whose schema declares no alias (a fresh audit's find)
        view = _add(ep, torch.ops.aten._unsafe_view.default, (image, [-1]), val=lambda: torch.empty(128))
        _add(ep, torch.ops.aten.fill_.Scalar, (view, 7.0), val=lambda: torch.empty(128))
    elif kind == "fill_input_unsafe_split":
        parts = _add(ep, torch.ops.aten.unsafe_split.Tensor, (image, 1), val=lambda: [torch.empty(1, 1, 8, 8)] * 2)
        first = _add(ep, operator.getitem, (parts, 0), val=lambda: torch.empty(1, 1, 8, 8))
        _add(ep, torch.ops.aten.fill_.Scalar, (first, 7.0), val=lambda: torch.empty(1, 1, 8, 8))
    elif kind == "fill_parameter":
        _add(ep, torch.ops.aten.zero_.default, (weight,), val=lambda: torch.empty(3, 64))
    elif kind == "profiler_op":  # a namespace outside the allow-list
        _add(ep, torch.ops.profiler._record_function_enter_new.default, ("x", None), val=lambda: None)
    else:
        raise ValueError(kind)
    ep.graph_module.recompile()
    path = folder / f"{kind}.pt2"
    torch.export.save(ep, str(path))
    return path


@pytest.fixture
def target(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(ORIGINAL)
    return path


@pytest.mark.slow
def test_control_the_edited_graph_overwrites_the_file_under_plain_torch(tmp_path, target):
    """Without the graph check, running the program writes the user's file: the attack is real."""
    path = hostile("from_file_fill", tmp_path, target)
    check_pt2_archive(path)  # the archive itself is clean: only the graph check can catch it
    code = ("import torch\nep = torch.export.load(%r)\nep.module()(image=torch.zeros(1, 1, 8, 8))\n" % str(path))
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=True)
    assert target.read_bytes() == b"A" * len(ORIGINAL)


KINDS = {  # kind -> words the refusal names
    "from_file_fill": ("from_file_default", "aten.from_file.default", "'filename'"),
    "from_file_read": ("aten.from_file.default",),
    "fill_input": ("aten.fill_.Scalar", "writes in place into the input 'image'"),
    "fill_input_view": ("aten.fill_.Scalar", "the input 'image'"),
    "fill_parameter": ("aten.zero_.default", "the parameter 'fc.weight'"),
    "fill_input_unsafe_view": ("aten.fill_.Scalar", "the input 'image'"),
    "fill_input_unsafe_split": ("aten.fill_.Scalar", "the input 'image'"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_hostile_graph_is_refused_before_it_runs(kind, tmp_path, target):
    path = hostile(kind, tmp_path, target)
    with pytest.raises(CheckpointError) as exc:
        load_export_program(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and "refused to run this .pt2" in message
    for words in KINDS[kind]:
        assert words in message, message
    assert target.read_bytes() == ORIGINAL


def test_from_file_inside_a_cond_branch_is_refused(tmp_path, target):
    """Subgraphs (cond's branches) are walked too."""
    ep = torch.export.export(_Cond(), (torch.randn(2, 1, 8, 8),))
    branch = ep.graph_module.true_graph_0
    out = next(n for n in branch.graph.nodes if n.op == "output")
    with branch.graph.inserting_before(out):
        mapped = branch.graph.call_function(torch.ops.aten.from_file.default, (str(target), True, len(ORIGINAL)),
                                            {"dtype": torch.uint8})
        fill = branch.graph.call_function(torch.ops.aten.fill_.Scalar, (mapped, 65))
    with next(n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder").fake_mode:
        mapped.meta["val"] = fill.meta["val"] = torch.empty(len(ORIGINAL), dtype=torch.uint8)
    branch.recompile()
    path = tmp_path / "cond.pt2"
    torch.export.save(ep, str(path))
    with pytest.raises(CheckpointError, match="in subgraph 'true_graph_0' calls aten.from_file.default"):
        load_export_program(path)
    assert target.read_bytes() == ORIGINAL


def test_operator_outside_aten_is_refused(tmp_path, target):
    path = hostile("profiler_op", tmp_path, target)
    with pytest.raises(CheckpointError, match="namespace 'profiler'"):
        load_export_program(path)


def test_python_callable_in_the_graph_is_refused():
    """The loader only yields operators, sym ops and control flow; a graph edited in memory can
    hold anything, and the check says so instead of running it."""
    from distill_export.nets.pt2_graph import check_program_graph

    ep = _export()
    image = next(n for n in ep.graph.nodes if n.name == "image")
    node = _add(ep, operator.getitem, (image, 0), val=lambda: torch.empty(1, 8, 8))
    node.target = print
    with pytest.raises(CheckpointError, match="a Python callable"):
        check_program_graph(ep, "prog.pt2")


def test_profile_refuses_the_from_file_graph(tmp_path, target):
    path = hostile("from_file_fill", tmp_path, target)
    result = runner.invoke(app, ["profile", str(path), *PROFILE_FAST])
    line = one_line_error(result, 2)
    assert str(path) in line and "aten.from_file.default" in line
    assert target.read_bytes() == ORIGINAL


def test_teacher_option_refuses_the_from_file_graph(tmp_path, target):
    path = hostile("from_file_fill", tmp_path, target)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--teacher", str(path), "--out", str(out), "--quiet"])
    line = one_line_error(result, 2)
    assert "aten.from_file.default" in line
    assert target.read_bytes() == ORIGINAL
    assert not out.exists()


@pytest.mark.slow  # a fresh interpreter importing torch: ~6 s; the CliRunner test above covers the logic
def test_profile_refuses_the_from_file_graph_in_a_real_process(tmp_path, target):
    path = hostile("from_file_fill", tmp_path, target)
    proc = subprocess.run([sys.executable, "-m", "distill_export.cli", "profile", str(path), *PROFILE_FAST],
                          capture_output=True, text=True, timeout=300)
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "aten.from_file.default" in lines[0]
    assert target.read_bytes() == ORIGINAL


# ----- what the product (and a user following its docs) exports still loads ----------------------
class _Cond(nn.Module):
    """Control flow: cond's branches are subgraphs, checked like the main graph."""

    def forward(self, image):
        flat = image.flatten(1)
        return torch.cond(flat.sum() > 0, lambda x: x.relu(), lambda x: x.abs(), (flat,))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_programs_with_batchnorm_and_control_flow_load(mode, tmp_path):
    """Train mode: BatchNorm writes its running statistics (buffers) in place; allowed."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten())
    net.train(mode == "train")
    ep = torch.export.export(net, (torch.randn(2, 1, 8, 8),))
    torch.export.save(ep, str(tmp_path / "bn.pt2"))
    assert load_export_program(tmp_path / "bn.pt2").net(torch.randn(2, 1, 8, 8)).shape == (2, 144)
    ep = torch.export.export(_Cond(), (torch.randn(2, 1, 8, 8),))
    torch.export.save(ep, str(tmp_path / "cond.pt2"))
    assert load_export_program(tmp_path / "cond.pt2").net(torch.randn(2, 1, 8, 8)).shape == (2, 64)


@pytest.mark.slow
def test_every_shipped_teacher_exports_to_a_program_that_loads(tmp_path):
    """export_teacher_program over each built-in teacher: concat and late fusion (image, audio,
    text, vector encoders) and the video detection teachers (late, early, frame)."""
    from distill_export.nets.external import export_teacher_program
    from distill_export.nets.teacher import FusionTeacher, LateFusionTeacher
    from distill_export.nets.video_teacher import FrameDetectionTeacher, VideoEarlyTeacher, VideoLateTeacher

    torch.manual_seed(0)
    kinds = {"image": "image", "audio": "audio", "text": "text", "vec": "vector"}
    sizes = {"image": 1, "audio": 1, "text": 50, "vec": 6}
    example = {"image": torch.randn(2, 1, 8, 8), "audio": torch.randn(2, 1, 8, 8),
               "text": torch.randint(0, 50, (2, 5)), "vec": torch.randn(2, 6)}
    clip = {"video": torch.randn(2, 5, 1, 16, 16)}
    teachers = [
        (FusionTeacher(sizes, 3, width=4, kinds=kinds), example),
        (LateFusionTeacher(sizes, 3, width=4, kinds=kinds), example),
        (VideoLateTeacher({"video": 1}, 3, width=4), clip),
        (VideoEarlyTeacher({"video": 1}, 3, width=4), clip),
        (FrameDetectionTeacher({"image": 1}, 3, width=4), {"image": torch.randn(2, 1, 16, 16)}),
    ]
    for i, (teacher, inputs) in enumerate(teachers):
        path = export_teacher_program(teacher.eval(), inputs, tmp_path / f"t{i}.pt2")
        loaded = load_export_program(path)
        torch.testing.assert_close(loaded.forward_features(inputs)[1], teacher.forward_features(inputs)[1])


@pytest.mark.slow  # ~25 s on one core: torch.export of resnet18, mobilenet_v3, the detectors
def test_every_registered_student_exports_to_a_program_that_loads(tmp_path):
    """A student saved as a .pt2 (profile FILE.pt2), eval and train mode; detectors with decode."""
    from distill_export.nets.detectors import with_decode
    from distill_export.nets.students import create_student, student_names, student_task

    x = torch.randn(2, 3, 32, 32)
    for name in student_names():
        torch.manual_seed(0)
        net = create_student(name, 3, in_channels=3, input_size=32)
        nets = [net.eval(), net.train()]
        if student_task(name) == "detection":
            nets.append(with_decode(net, 3).eval())
        for i, module in enumerate(nets):
            path = tmp_path / f"{name}_{i}.pt2"
            torch.export.save(torch.export.export(module, (x,)), str(path))
            load_export_program(path)  # raises if the graph check refused it
