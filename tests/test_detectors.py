"""Detection nets (nets/detectors.py, nets/video_teacher.py): shapes at stride 4, the student
registry's task tag, ONNX export with the in-graph decode (dynamo and TorchScript, standard
operators only, dynamic batch) and ONNX Runtime parity of the decoded detections after matching,
the teachers' fusions, checkpoint round trips, --student-init, and a short learning probe."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _detection_clips import moving_shapes
from distill_export.data.dataset import ModalitySpec
from distill_export.errors import CheckpointError, ConfigError
from distill_export.nets.centernet import MAX_DETECTIONS, OUTPUT_STRIDE, decode, head_channels
from distill_export.nets.detectors import HEAT_PRIOR, check_heads, with_decode
from distill_export.nets.model_io import load_student, load_teacher, save_student
from distill_export.nets.students import check_student_task, create_student, student_names, student_task
from distill_export.nets.teacher import teacher_archs, teacher_class
from distill_export.nets.video_teacher import (
    DETECTION_TEACHER_FUSIONS,
    build_detection_teacher,
    detection_teacher_spec,
)

C = 10
DETECTORS = ("centernet_tiny", "centernet_mnv3")


def fake_data(classes: int = C, frames: int = 5, size: int = 64):
    """What the nets read of a Dataset: modalities (image, video) and the output count."""
    mods = {"image": ModalitySpec("image", (1, size, size), 0.2, 0.3),
            "video": ModalitySpec("video", (frames, 1, size, size), 0.2, 0.3, kind="video")}
    return SimpleNamespace(modalities=mods, num_outputs=classes, name="moving_shapes",
                           info={"frame_of": {"image": "video"}},  # as a manifest says: the clip's target frame
                           target_names=[f"shape{i}" for i in range(classes)])


# ----- students: registry, shapes ---------------------------------------------------------------


def test_detectors_are_tagged_and_a_classifier_is_refused():
    assert set(student_names("detection")) == set(DETECTORS)
    assert "tiny_cnn" in student_names("classification") and "centernet_tiny" not in student_names("classification")
    assert student_task("centernet_tiny") == "detection" and student_task("resnet18") == "classification"
    assert student_task("pkg.mod:factory") is None  # a user's factory: its output shape decides
    check_student_task("centernet_mnv3", "detection")
    check_student_task("pkg.mod:factory", "detection")
    with pytest.raises(ConfigError, match="'tiny_cnn' is a classification student; task detection needs one of: "
                                          "centernet_mnv3, centernet_tiny"):
        check_student_task("tiny_cnn", "detection")
    with pytest.raises(ConfigError, match="is a detection student"):
        check_student_task("centernet_tiny", "classification")
    with pytest.raises(ConfigError, match="unknown student"):
        check_student_task("centernet_huge", "detection")


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("size", [64, 96])
def test_heads_at_stride_4(name, size):
    torch.manual_seed(0)
    model = create_student(name, C, in_channels=1, input_size=size).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        feats, out = model.forward_features(x)
        assert torch.equal(out, model(x))
    h = size // OUTPUT_STRIDE
    assert out.shape == (2, head_channels(C), h, h)
    assert feats.shape == (2, model.feature_dim, h, h)
    check_heads(out, C, x)
    with pytest.raises(ValueError, match="must be"):
        check_heads(out[:, :-1], C, x)


def test_mobilenet_detector_on_small_and_rgb_inputs():
    for channels, size in ((1, 32), (3, 128)):
        model = create_student("centernet_mnv3", 3, in_channels=channels, input_size=size).eval()
        with torch.no_grad():
            assert model(torch.randn(1, channels, size, size)).shape == (1, 7, size // 4, size // 4)


def test_centernet_tiny_size_and_heat_prior():
    model = create_student("centernet_tiny", C, in_channels=1, input_size=64)
    params = sum(p.numel() for p in model.parameters())
    assert 80_000 <= params <= 95_000, params  # the issue's prototype: 89k
    bias = model.heads.heat[-1].bias
    assert torch.allclose(bias, torch.full_like(bias, float(np.log(HEAT_PRIOR / (1 - HEAT_PRIOR)))))
    with torch.no_grad():  # every cell starts near p = 0.1: focal loss starts sane
        p = torch.sigmoid(model.eval()(torch.randn(1, 1, 64, 64))[:, :C])
    assert 0.02 < float(p.mean()) < 0.3


# ----- ONNX: the decoded detector, matched parity --------------------------------------------


def _sharpen(model):
    """Spread the heat logits (x20) so TopK's order is not decided by 1e-6 rounding."""
    with torch.no_grad():
        model.heads.heat[-1].weight.mul_(20)
    return model


def export_decoded(model, num_classes: int, shape: tuple, path, exporter: str) -> None:
    """As export/onnx.py _torch_export does it, on the model with the decode appended."""
    wrapper = with_decode(model.eval(), num_classes).eval()
    sample = torch.zeros(2, *shape)  # batch 2: a batch of 1 can get specialised away
    names = ["boxes", "scores", "classes"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {"x": {0: torch.export.Dim("batch", min=1, max=65536)}}
            program = torch.onnx.export(wrapper, (sample,), dynamo=True, opset_version=18, input_names=["image"],
                                        output_names=names, dynamic_shapes=dims, verbose=False, report=False)
            program.save(str(path), external_data=False)
        else:
            axes = {n: {0: "batch"} for n in ["image", *names]}
            torch.onnx.export(wrapper, (sample,), str(path), dynamo=False, opset_version=18, input_names=["image"],
                              output_names=names, dynamic_axes=axes, do_constant_folding=True)


def matched(ref: tuple, cand: tuple, box_tol: float = 1e-3, score_tol: float = 1e-4) -> float:
    """Share of the reference's detections that the candidate has too, per image, in any order:
    same class, score within score_tol, every box coordinate within box_tol px."""
    hits = total = 0
    for rb, rs, rc, cb, cs, cc in zip(*ref, *cand):
        used = np.zeros(len(cs), bool)
        for b, s, c in zip(rb, rs, rc):
            total += 1
            ok = (~used) & (cc == c) & (np.abs(cs - s) <= score_tol) & (np.abs(cb - b).max(1) <= box_tol)
            if ok.any():
                used[np.flatnonzero(ok)[0]] = True
                hits += 1
    return hits / total


def ort_run(path, x: np.ndarray) -> tuple:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return tuple(sess.run(["boxes", "scores", "classes"], {"image": x}))


@pytest.mark.parametrize("name,exporter", [
    ("centernet_tiny", "dynamo"), ("centernet_tiny", "torchscript"),
    pytest.param("centernet_mnv3", "dynamo", marks=pytest.mark.slow),
    pytest.param("centernet_mnv3", "torchscript", marks=pytest.mark.slow),
])
def test_onnx_export_with_decode_matches_pytorch(name, exporter, tmp_path):
    import onnx

    onnxruntime = pytest.importorskip("onnxruntime")
    del onnxruntime
    torch.manual_seed(0)
    model = _sharpen(create_student(name, 3, in_channels=1, input_size=64)).eval()
    path = tmp_path / f"{name}.onnx"
    export_decoded(model, 3, (1, 64, 64), path, exporter)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}, "standard operators only"
    assert {"TopK", "MaxPool"} <= {n.op_type for n in proto.graph.node}
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    _, image, _ = moving_shapes(4, classes=3, seed=1)
    for batch in (1, 4):
        x = image[:batch]
        with torch.no_grad():
            ref = tuple(t.numpy() for t in decode(model(x), 3, OUTPUT_STRIDE))
        got = ort_run(path, x.numpy())
        assert got[0].shape == (batch, MAX_DETECTIONS, 4) and got[2].dtype == np.int64
        assert matched(ref, got) >= 0.95, (batch, matched(ref, got))  # a near-tie at rank K may swap


def test_export_stage_fp32_fp16_int8_with_the_decode_tail(tmp_path):
    """The export stage's own path (export_formats with the detection task's DecodeTail): FP32,
    FP16 (the decode kept FP32) and INT8 files of centernet_tiny run on ONNX Runtime and give
    the PyTorch detections back (matched, any order). Random weights: FP16 and INT8 are held to
    running and to the best detection only; a trained centernet_tiny matched 100% in all three."""
    import onnx

    from distill_export.export import ExportOptions, ExportSource, export_formats
    from distill_export.tasks.detection.graph import DecodeTail

    torch.manual_seed(0)
    model = _sharpen(create_student("centernet_tiny", 3, in_channels=1, input_size=64)).eval()
    meta = {"input_name": "image", "input_shape": [1, 64, 64], "norm_mean": 0.0, "norm_std": 1.0}
    cal = moving_shapes(16, classes=3, seed=2)[1].numpy()
    source = ExportSource(model, meta, "0" * 64, tmp_path, calibration=cal, output_name="boxes",
                          tail=DecodeTail(3), output_names=("boxes", "scores", "classes"))
    paths = {f: r.path for f, r in export_formats(source, ["onnx", "onnx-fp16", "onnx-int8"],
                                                 ExportOptions(calibration_samples=16)).items()}
    assert not {"Resize", "Cast"} & {n.op_type for n in onnx.load(paths["onnx"]).graph.node
                                     if not n.name.startswith("tail/")}
    x = moving_shapes(4, classes=3)[1]
    with torch.no_grad():
        ref = tuple(t.numpy() for t in decode(model(x), 3, OUTPUT_STRIDE))
    for fmt, path in paths.items():
        # float outputs widened as runtimes/onnx_runtime.run_onnx does (the FP16 file's boxes and
        # scores come out float16 today: onnxconverter_common's node_block_list)
        boxes, scores, classes = got = tuple(a.astype(np.float32) if a.dtype == np.float16 else a
                                             for a in ort_run(path, x.numpy()))
        assert classes.dtype == np.int64, fmt
        assert scores.shape == (4, MAX_DETECTIONS), fmt
        if fmt == "onnx":
            assert matched(ref, got) == 1.0
        elif fmt == "onnx-fp16":
            assert np.abs(scores[:, 0] - ref[1][:, 0]).max() < 1e-2
            assert matched(ref, got, box_tol=0.5, score_tol=1e-2) >= 0.75


def test_teacher_exports_to_onnx(tmp_path):
    """export/teacher_onnx.py on a late-fusion teacher: one clip input, dynamic batch, raw heads."""
    from distill_export.export.base import ExportOptions
    from distill_export.export.teacher_onnx import export_teacher_onnx

    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    teacher = DETECTION_TEACHER_FUSIONS["late"][1]({"video": 1}, 3, width=8, frames=5).eval()
    video = moving_shapes(3, classes=3)[0]
    res = export_teacher_onnx(teacher, {"video": video}, tmp_path, ExportOptions())
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        got = sess.run(None, {"video": video[:batch].numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, teacher({"video": video[:batch]}).numpy(), atol=1e-4, rtol=1e-4)


# ----- --student-init: ImageNet backbone weights -----------------------------------------------


def test_student_init_loads_a_torchvision_backbone_into_the_detector(tmp_path):
    from torchvision.models import mobilenet_v3_small

    from distill_export.nets.student_init import init_student

    torch.manual_seed(1)
    tv = mobilenet_v3_small(weights=None)
    path = tmp_path / "mnv3.pt"
    torch.save(tv.state_dict(), path)
    torch.manual_seed(2)
    model = create_student("centernet_mnv3", C, in_channels=3, input_size=224)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("heads.")}
    init_student(model, path, "centernet_mnv3")
    own = model.state_dict()
    for tv_key, ours in model.torchvision_keys.items():
        assert torch.equal(own[ours], tv.state_dict()[tv_key]), tv_key
    assert all(torch.equal(own[k], v) for k, v in heads_before.items())  # neck and heads keep their init
    torch.save({"other.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="does not fit student centernet_mnv3"):
        init_student(model, path, "centernet_mnv3")


# ----- teachers --------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", list(DETECTION_TEACHER_FUSIONS))
def test_teacher_fusions_shapes_and_a_dropped_clip(fusion):
    data = fake_data()
    modalities = ["image"] if fusion == "frame" else None
    arch, kwargs = detection_teacher_spec(data, 8, fusion, modalities)
    assert arch == DETECTION_TEACHER_FUSIONS[fusion][0] and teacher_class(arch) is DETECTION_TEACHER_FUSIONS[fusion][1]
    torch.manual_seed(0)
    teacher = teacher_class(arch)(**kwargs).eval()
    video, image, _ = moving_shapes(2)
    inputs = {"video": video, "image": image}
    feats, out = teacher.forward_features(inputs)
    assert out.shape == (2, C + 4, 16, 16) and feats.shape == (2, teacher.feature_dim, 16, 16)
    assert torch.equal(teacher(inputs), out) and teacher.fusion_name == fusion
    (m,) = teacher.modality_names
    assert m == ("image" if fusion == "frame" else "video")
    if fusion != "frame":  # the clip dropped: the teacher on a still of the centre frame
        still = {"video": video[:, 2:3].expand_as(video)}
        assert torch.allclose(teacher.forward_features(inputs, drop=("video",))[1], teacher(still))


def test_teacher_spec_picks_the_one_frame_teacher_for_the_control():
    data = fake_data()
    assert detection_teacher_spec(data, 16, "late")[0] == "video_late_teacher"
    arch, kw = detection_teacher_spec(data, 16, "late", modalities=["image"])  # the self-training control
    assert arch == "frame_detection_teacher" and kw["modalities"] == {"image": 1} and kw["width"] == 16
    assert detection_teacher_spec(data, 16, "early")[1]["frames"] == 5
    with pytest.raises(ConfigError, match="not a detection teacher"):
        detection_teacher_spec(data, 16, "concat")
    config = SimpleNamespace(teacher=SimpleNamespace(width=8, fusion="early"),
                             data=SimpleNamespace(student_modality="image"))
    arch, kw, teacher = build_detection_teacher(config, data)
    assert arch == "video_early_teacher" and teacher.fusion_name == "early"
    with pytest.raises(ValueError, match="built for clips of 5 frames"):
        teacher({"video": torch.zeros(1, 3, 1, 64, 64)})
    archs = {"video_late_teacher", "video_early_teacher", "frame_detection_teacher", "fusion_teacher"}
    assert archs <= set(teacher_archs())


# ----- checkpoints -----------------------------------------------------------------------------


def test_teacher_and_student_checkpoint_round_trip(tmp_path):
    from distill_export.nets.checkpoint import save_checkpoint

    data = fake_data()
    x = {"video": moving_shapes(2)[0]}
    arch, kwargs = detection_teacher_spec(data, 8, "late")
    torch.manual_seed(0)
    teacher = teacher_class(arch)(**kwargs).eval()
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, teacher, kind="teacher", arch=arch, arch_kwargs=kwargs,
                    meta={"input_shapes": {"video": list(data.modalities["video"].shape)}})
    loaded = load_teacher(path, data)
    assert type(loaded) is type(teacher)
    with torch.no_grad():
        assert torch.equal(loaded(x), teacher(x))
    with pytest.raises(CheckpointError, match="predicts 10 classes, the data has 3"):
        load_teacher(path, fake_data(classes=3))
    with pytest.raises(CheckpointError, match="trained on video of shape"):
        load_teacher(path, fake_data(frames=7))

    config = SimpleNamespace(data=SimpleNamespace(student_modality="image"),
                             student=SimpleNamespace(name="centernet_tiny"))
    torch.manual_seed(0)
    student = create_student("centernet_tiny", C, 1, 64).eval()
    spath = tmp_path / "student.pt"
    save_student(spath, student, config, data, "teacher.pt", {}, {"class_names": [str(i) for i in range(C)]})
    again, meta = load_student(spath)
    image = moving_shapes(2)[1]
    with torch.no_grad():
        assert torch.equal(again(image), student(image))
    assert meta["input_shape"] == [1, 64, 64] and meta["class_names"][0] == "0"


# ----- learning --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["late", "early"])
def test_teacher_learns_a_small_batch(fusion):
    """A short overfit on 8 clips: CenterNet's loss falls to a fraction of its start."""
    torch.manual_seed(0)
    video, _, targets = moving_shapes(6, classes=3, seed=3)
    teacher = DETECTION_TEACHER_FUSIONS[fusion][1]({"video": 1}, 3, width=8, frames=5)
    x = {"video": video}
    opt = torch.optim.Adam(teacher.parameters(), 5e-3)
    losses = []
    for _ in range(30):
        loss = teacher.loss(x, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and min(losses[-5:]) < 0.35 * losses[0], losses[::5]
