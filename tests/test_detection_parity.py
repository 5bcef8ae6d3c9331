"""The detection task's export side: parity on matched detections (never by index), its gates,
the export wrapper with the decode in the graph, the report view and the detections picture."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from distill_export.config import ValidateConfig
from distill_export.tasks.detection import DetectionTask
from distill_export.tasks.detection.parity import MATCH_IOU, SCORE_THRESHOLD
from distill_export.validate import Gate, gate_limit, gates_for

from _detection_cases import NAMES, random_case


def _reference(seed: int = 0) -> tuple[dict, np.ndarray]:
    """Decoded-looking detections: 40 images, K=20, scores sorted best first, boxes with area."""
    dets, targets = random_case(n=40, seed=seed)
    order = np.argsort(-dets["scores"], axis=1, kind="mergesort")
    out = {"boxes": np.take_along_axis(dets["boxes"], order[..., None], 1).astype(np.float32),
           "scores": np.take_along_axis(dets["scores"], order, 1).astype(np.float32),
           "classes": np.take_along_axis(dets["classes"], order, 1)}
    x1, y1, x2, y2 = np.moveaxis(out["boxes"], -1, 0)
    out["boxes"] = np.stack([np.minimum(x1, x2 - 1), np.minimum(y1, y2 - 1), x2, y2], -1)
    return out, targets


def _permute(dets: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(dets["scores"].shape[1]) for _ in range(len(dets["scores"]))])
    return {"boxes": np.take_along_axis(dets["boxes"], order[..., None], 1),
            "scores": np.take_along_axis(dets["scores"], order, 1),
            "classes": np.take_along_axis(dets["classes"], order, 1)}


def _judge(task, metrics: dict, precision: str) -> dict[str, bool]:
    worst = task.worst_case({"1": metrics, "64": metrics})
    return {n: Gate(n, worst[n], lim, kind).passed for n, kind, lim in gates_for(precision, ValidateConfig(), task)}


def test_identical_outputs_match_fully():
    ref, targets = _reference()
    m = DetectionTask().parity_metrics({k: v.copy() for k, v in ref.items()}, ref, targets)
    assert m["matched_detections"] == 1.0 and m["matched_count"] == m["reference_count"] > 0
    assert m["max_score_diff"] == 0 and m["max_box_diff_px"] == 0 and m["map50_delta"] == 0
    assert m["map50"] == m["reference_map50"] > 0
    assert set(m) <= set(DetectionTask.parity_better)  # every metric says which way is better


def test_reordered_near_ties_still_match():
    """TopK orders near-ties arbitrarily: compared by index, boxes would differ by tens of px."""
    ref, targets = _reference(seed=1)
    cand = {k: v.copy() for k, v in ref.items()}
    jitter = np.random.default_rng(0).uniform(-1e-5, 1e-5, cand["scores"].shape).astype(np.float32)
    cand["scores"] = np.where(cand["scores"] > 0, cand["scores"] + jitter, 0)  # padding stays padding
    cand = _permute(cand, seed=2)
    assert np.abs(cand["boxes"] - ref["boxes"]).max() > 10  # by index they disagree
    m = DetectionTask().parity_metrics(cand, ref, targets)
    assert m["matched_detections"] == 1.0
    assert m["max_score_diff"] < 2e-5 and m["max_box_diff_px"] == 0
    assert m["map50_delta"] < 1e-3
    assert all(_judge(DetectionTask(), m, "fp32").values())


def test_a_box_shifted_by_3px_is_unmatched():
    ref, targets = _reference(seed=2)
    cand = {k: v.copy() for k, v in ref.items()}
    i, k = np.argwhere(ref["scores"] >= SCORE_THRESHOLD)[0]
    w = ref["boxes"][i, k, 2] - ref["boxes"][i, k, 0]
    cand["boxes"][i, k, [0, 2]] += 3  # IoU = (w-3)/(w+3) < 0.9 for boxes under 57 px wide
    assert (w - 3) / (w + 3) < MATCH_IOU
    m = DetectionTask().parity_metrics(_permute(cand, 3), ref, targets)
    assert m["matched_count"] == m["reference_count"] - 1
    cand["boxes"][i, k, [0, 2]] -= 2.5  # 0.5 px off: IoU > 0.9, matched, the shift measured
    m = DetectionTask().parity_metrics(cand, ref, targets)
    assert m["matched_detections"] == 1.0 and m["max_box_diff_px"] == pytest.approx(0.5, abs=1e-5)


def test_classes_must_agree_and_low_scores_are_not_judged():
    ref, targets = _reference(seed=3)
    cand = {k: v.copy() for k, v in ref.items()}
    low = ref["scores"] < SCORE_THRESHOLD
    cand["classes"] = np.where(low, (ref["classes"] + 1) % 10, ref["classes"])  # only unjudged ones change
    assert DetectionTask().parity_metrics(cand, ref, targets)["matched_detections"] == 1.0
    cand["classes"] = (ref["classes"] + 1) % 10
    assert DetectionTask().parity_metrics(cand, ref, targets)["matched_detections"] == 0.0


def test_a_corrupted_candidate_fails_every_precisions_gates():
    ref, targets = _reference(seed=4)
    rng = np.random.default_rng(0)
    cand = {"boxes": ref["boxes"] + rng.normal(0, 8, ref["boxes"].shape).astype(np.float32),
            "scores": rng.permutation(ref["scores"].ravel()).reshape(ref["scores"].shape),
            "classes": ref["classes"]}
    task = DetectionTask()
    m = task.parity_metrics(cand, ref, targets)
    assert m["matched_detections"] < 0.5 and m["map50_delta"] > 0.02
    for precision in ("fp32", "fp16", "int8"):
        verdicts = _judge(task, m, precision)
        assert verdicts == {"map50_delta": False, "matched_detections": False}, precision


def test_no_targets_gives_no_map_delta_and_no_detections_count_as_matched():
    ref, _ = _reference(seed=5)
    m = DetectionTask().parity_metrics(ref, ref, np.zeros((0,)))
    assert m["map50_delta"] == 0 and m["map50"] == 0
    empty = {k: (np.zeros_like(v) if k != "classes" else v) for k, v in ref.items()}
    m = DetectionTask().parity_metrics(empty, empty, np.full((40, 3, 5), -100.0))
    assert m["matched_detections"] == 1.0 and m["reference_count"] == 0


def test_the_gates_read_their_limits_from_the_config():
    task = DetectionTask()
    cfg = ValidateConfig()
    limits = {g.config_key: gate_limit(g, cfg) for g in task.gates}
    assert limits == {g.config_key: g.default for g in task.gates}  # config defaults == task defaults
    assert limits == {"fp32_map50_delta": 0.001, "fp32_matched": 0.99, "fp16_map50_delta": 0.005,
                      "fp16_matched": 0.99, "int8_map50_delta": 0.02, "int8_matched": 0.95}
    from distill_export.validate import parse_gate_flags

    assert parse_gate_flags(["int8_matched=0.9"], task) == {"validate.int8_matched": 0.9}
    from distill_export.config import RunConfig, apply_overrides

    assert apply_overrides(RunConfig(), {"validate.int8_matched": 0.9}).validate.int8_matched == 0.9


def test_worst_case_over_batch_sizes():
    task = DetectionTask()
    a = {"matched_detections": 1.0, "matched_count": 10, "reference_count": 10, "max_score_diff": 1e-6,
         "max_box_diff_px": 0.0, "map50": 0.3, "reference_map50": 0.31, "map50_delta": 0.01}
    b = {**a, "matched_detections": 0.9, "matched_count": 9, "max_score_diff": 1e-3, "map50": 0.32, "map50_delta": 0.0}
    w = task.worst_case({"1": a, "64": b})
    assert w["matched_detections"] == 0.9 and w["max_score_diff"] == 1e-3 and w["map50_delta"] == 0.01
    assert w["map50"] == 0.3 and w["reference_map50"] == 0.31


# ----- export: the decode inside the graph -----------------------------------------------------------
def test_export_tail_is_the_decode_and_matches_decode_outputs():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 3 + 4, 4, stride=4))
    task = DetectionTask()
    wrapped = torch.nn.Sequential(net, task.export_tail(3 + 4)).eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        boxes, scores, classes = wrapped(x)
        raw = net(x)
    ref = task.decode_outputs(raw.numpy())
    assert boxes.shape == (5, 20, 4) and classes.dtype == torch.int64
    np.testing.assert_array_equal(boxes.numpy(), ref["boxes"])
    np.testing.assert_array_equal(scores.numpy(), ref["scores"])
    m = task.parity_metrics({"boxes": boxes.numpy(), "scores": scores.numpy(), "classes": classes.numpy()}, ref,
                            np.zeros((0,)))
    assert m["matched_detections"] == 1.0


def test_the_wrapped_detector_on_onnx_runtime_passes_the_fp32_gates(tmp_path):
    """The decode exports with standard operators and ONNX Runtime's detections match PyTorch's."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    import warnings

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 10 + 4, 4, stride=4)).eval()
    task = DetectionTask()
    x = torch.rand(16, 1, 64, 64)
    path = tmp_path / "det.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Sequential(net, task.export_tail(10 + 4)).eval(), (x[:2],), str(path), dynamo=False, opset_version=18,
                          input_names=["x"], output_names=list(task.output_names),
                          dynamic_axes={n: {0: "batch"} for n in ("x", *task.output_names)})
    outs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = task.decode_outputs(net(x).numpy())
    targets = np.concatenate([ref["classes"][:, :2, None], ref["boxes"][:, :2]], -1).astype(np.float64)
    m = task.parity_metrics(dict(zip(task.output_names, outs)), ref, targets)
    assert m["reference_count"] > 0 and m["matched_detections"] == 1.0 and m["map50_delta"] == 0
    assert all(_judge(task, m, "fp32").values())


def test_export_meta_and_output_size():
    data = type("D", (), {"target_names": NAMES})()
    task = DetectionTask()
    assert task.output_size(data) == 7
    assert task.export_meta(data) == {"class_names": NAMES, "max_detections": 20, "box_format": "xyxy",
                                      "output_stride": 4}


def test_supervised_loss_is_centernets():
    torch = pytest.importorskip("torch")
    from distill_export.nets.centernet import detection_loss

    out = torch.randn(2, 3 + 4, 8, 8, requires_grad=True)
    targets = torch.tensor([[[0, 2, 2, 14, 14], [-1, 0, 0, 0, 0]], [[2, 10, 4, 30, 20], [1, 0, 0, 8, 8]]]).float()
    loss = DetectionTask().supervised_loss(out, targets)
    assert torch.allclose(loss, detection_loss(out, targets, 3, 4))
    loss.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()


# ----- report and picture ----------------------------------------------------------------------------
def _record() -> dict:
    def metric(m50):  # per-class APs whose mean is the mAP, counts whose sum is n_objects (record/metrics.py)
        per_class = {n: {"ap50": ap, "ap50_95": ap and ap / 2, "n_objects": 600 if ap else 0}
                     for n, ap in zip(NAMES, (m50, m50, None))}
        return {"map50": m50, "map50_95": m50 / 2, "per_class": per_class, "n_images": 600, "n_objects": 1200}

    gate = {"value": 0.0, "limit": 0.001, "kind": "max", "passed": True}
    parity = {"matched_detections": 0.997, "matched_count": 997, "reference_count": 1000, "max_score_diff": 2e-3,
              "max_box_diff_px": 0.4, "map50": 0.291, "reference_map50": 0.29, "map50_delta": 0.001,
              "gates": {"map50_delta": gate, "matched_detections": {**gate, "kind": "min", "limit": 0.95}},
              "passed": True}
    return {
        "schema_version": 1,
        "task": {"name": "detection", "headline": "map50", "score_name": "mAP50"},
        "metrics": {"teacher": metric(0.39), "self_training_teacher": metric(0.2), "baseline": metric(0.165),
                    "self_training": metric(0.275), "student": metric(0.29)},
        "kd_gain": 0.125, "kd_verdict": "paid",
        "comparisons": {
            "student_vs_baseline": {"gain": 0.125, "ci95": [0.1, 0.15], "p_value": 0.0005, "verdict": "paid",
                                    "n_images": 600, "n_boot": 2000},
            "student_vs_self_training": {"gain": 0.015, "ci95": [-0.01, 0.04], "p_value": 0.3,
                                         "verdict": "no significant difference", "n_images": 600},
            "self_training_vs_baseline": {"gain": 0.11, "ci95": [0.08, 0.14], "p_value": 0.0005, "verdict": "paid"}},
        "distill": {"terms": [{"name": "pseudo_boxes", "weight": 1.0, "threshold": 0.3}], "label_fraction": 0.1},
        "exports": {"onnx-int8": {"format": "onnx-int8", "precision": "int8", "size_bytes": 120_000, "parity": parity}},
    }


def test_the_report_view_speaks_detection():
    view = DetectionTask().report_view()
    record = _record()
    md = "\n".join(view.markdown_sections(record))
    assert "| student (distilled) | 29.0 | 14.5 | 600 | 1200 |" in md
    assert "one-frame teacher" in md and "AP50 per class" in md and "| c | 0 | n/a |" in md
    assert "Distillation paid" in md and "+12.5 mAP50 points" in md and "95% CI +10.0 to +15.0" in md
    assert "p=0.0005" in md and "Self-training control" in md and "+1.5 points over it" in md
    row = view.parity_rows(record)[0]
    assert row[:2] == ["onnx-int8", "int8"] and "99.7% (997/1000)" in row and "0.0010" in row
    assert "ΔmAP50 (abs.)" in view.PARITY_HEADER
    assert len(view.PARITY_HEADER) == len(row)
    html = "\n".join(view.html_sections(record))
    assert "<table>" in html and "Distillation paid" in html
    assert view.model_score(as_record(record), "student", "onnx-int8") == 0.291
    assert view.model_score(as_record(record), "baseline", "pytorch") == 0.165
    summary = view.summary_entries(as_record(record))
    assert ("student", "onnx-int8", "29.1", "PASS") in summary and summary[0][0] == "teacher"
    assert view.terminal_lines(record)[0].startswith("kd_gain: +12.50 mAP50 points")


def as_record(d):
    from distill_export.record import as_record as _as

    return _as(d)


def test_draw_detections_writes_the_picture(tmp_path):
    pytest.importorskip("matplotlib")
    from distill_export.tasks.detection.draw import draw_detections, figure_size_px

    dets, targets = random_case(n=6, c=3, seed=8)
    frames = np.random.default_rng(0).uniform(0, 1, (6, 1, 64, 64)).astype(np.float32)
    per_image = [(dets["boxes"][i], dets["scores"][i], dets["classes"][i]) for i in range(6)]
    path = draw_detections(frames, {"student": dets, "teacher": per_image}, targets, tmp_path / "figs" / "det.png",
                           class_names=NAMES)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == figure_size_px(4, 2)
    assert [p.name for p in path.parent.iterdir()] == ["det.png"]  # no temporary file left
