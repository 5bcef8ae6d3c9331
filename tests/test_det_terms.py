"""The detection distillation terms (pseudo_boxes, heatmap_kd, pkd), the labels term on boxes,
and the task tags that keep classification terms off detection (and back).

Heads follow nets/centernet.py: (B, C+4, h, w) at stride 4; boxes (B, M, 5) [class, x1, y1, x2, y2]
in input px, class -1 padding, an unlabeled image all IGNORE_INDEX. A "teacher" that is the
ground truth rendered as heads (render_heads) decodes back to exactly those boxes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill_export.config import DistillConfig
from distill_export.errors import ConfigError
from distill_export.methods import (
    DistillModule, Objective, SetupInfo, TermInputs, check_objective_for_task, check_terms_for_task,
    presets_for_task, term_class, term_specs, terms_for_task,
)
from distill_export.methods.base import Term, register_term
from distill_export.nets.centernet import OUTPUT_STRIDE, decode, detection_loss, encode

from _methods_helpers import IGNORE, _close, _random

C, H, W = 3, 8, 8  # classes, head map (input 32x32 at stride 4)
SIZE = H * OUTPUT_STRIDE


def boxes():
    """(4, 2, 5) targets: rows 0, 2 labeled; rows 1, 3 unlabeled (their true boxes kept aside)."""
    truth = torch.tensor([
        [[0, 2, 3, 14, 13], [2, 17, 16, 29, 30]],
        [[1, 5, 6, 17, 20], [-1, 0, 0, 0, 0]],
        [[2, 10, 2, 24, 12], [0, 1, 18, 11, 31]],
        [[0, 14, 12, 26, 26], [1, 2, 2, 12, 11]],
    ], dtype=torch.float32)
    labels = truth.clone()
    labels[[1, 3]] = IGNORE
    return truth, labels


def render_heads(targets: torch.Tensor, peak: float = 1 - 1e-4) -> torch.Tensor:
    """(B, M, 5) boxes -> (B, C+4, H, W) heads a perfect detector would output: heat logits of
    the encoded Gaussians (the centre cell at `peak`), size and offset at each centre cell."""
    t = encode(targets, C, H, W, OUTPUT_STRIDE)
    heat = (t["heat"] * peak).clamp(1e-4, peak)
    heads = torch.zeros(len(targets), C + 4, H, W)
    heads[:, :C] = torch.log(heat / (1 - heat))
    for b in range(len(targets)):
        for m in range(targets.shape[1]):
            if t["mask"][b, m] > 0:
                i = t["index"][b, m]
                heads[b, C:C + 2].view(2, -1)[:, i] = t["size"][b, m]
                heads[b, C + 2:].view(2, -1)[:, i] = t["offset"][b, m]
    return heads


def det_batch(student, teacher, labels=None, t_feats=None, side=None):
    return TermInputs(student, boxes()[1] if labels is None else labels, teacher, t_feats, side or {})


def loss_and_grad(term, student, teacher, **kw):
    student = student.clone().requires_grad_()
    value = term.loss(det_batch(student, teacher, **kw), "x")
    value.backward()
    return value.detach(), student.grad


# ----- the classification terms, unchanged ----------------------------------------------------
# (loss, Σ|∂loss/∂student logits|) on a fixed batch, computed before the detection work (67b0b15^).
BEFORE = {
    "ce": (2.404975414276123, 1.6075961589813232),
    "kd": (2.792059898376465, 1.825966477394104),
    "ls_kd": (0.9272708296775818, 0.31393468379974365),
    "dkd": (21.050750732421875, 15.104530334472656),
    "dist": (1.84292733669281, 0.8976559638977051),
    "selective_kd": (1.0986366271972656, 0.667616605758667),
    "pseudo_label": (2.1645500659942627, 0.9344812631607056),
    "feature": (0.7877091765403748, 0.0),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
@pytest.mark.parametrize("info", [SetupInfo(5, 6, 3), SetupInfo(5, 6, 3, supervised_loss=lambda o, t: o.sum())])
def test_classification_terms_are_unchanged_on_a_fixed_batch(name, info):
    """Classification keeps its cross-entropy even when the lead hands over the task's loss."""
    s, t, y = _random(n_rows=8, n_classes=5, seed=21, scale=2.0, unlabeled=(1, 4, 6))
    torch.manual_seed(21)
    fs, ft = torch.randn(8, 6), torch.randn(8, 3)
    term = term_class(name)(**({"threshold": 0.4} if name == "pseudo_label" else {}))
    if hasattr(term, "impl"):
        term.impl = "reference"
    torch.manual_seed(0)
    term.setup(info)
    side = term.student_side(fs, s)
    s = s.clone().requires_grad_()
    value = term.loss(TermInputs(s, y, t, ft, {"x": side} if side is not None else {}), "x")
    value.backward()
    grad = s.grad.abs().sum() if s.grad is not None else torch.tensor(0.0)
    _close(torch.stack([value.detach(), grad]), torch.tensor(BEFORE[name]), atol=1e-7, rtol=1e-6)


# ----- task tags -------------------------------------------------------------------------------
def test_the_task_tag_refuses_classification_terms_for_detection():
    with pytest.raises(ConfigError, match=r"term 'dkd' does not apply to task 'detection' "
                                          r"\(terms for detection: ce, heatmap_kd, pkd, pseudo_boxes") as info:
        check_terms_for_task(["ce", "pseudo_boxes", "dkd"], "detection")
    listed = str(info.value).split("terms for detection: ")[1].rstrip(")").split(", ")
    assert not {"kd", "dkd", "feature"} & set(listed)  # (other test files' terms, tasks None, may be listed)
    with pytest.raises(ConfigError, match="term 'pkd' does not apply to task 'classification'"):
        check_terms_for_task(term_specs(DistillConfig(terms=[{"name": "pkd"}])), "classification")
    check_terms_for_task(["ce", "pseudo_boxes", "heatmap_kd", "pkd"], "detection")
    assert {"ce", "kd", "dkd", "feature"} <= set(terms_for_task("classification"))
    assert not {"pseudo_boxes", "heatmap_kd", "pkd"} & set(terms_for_task("classification"))


def test_presets_know_their_task():
    assert presets_for_task("detection") == ["labels_only", "pseudo_boxes", "heatmap_kd", "det_kd", "det_pkd"]
    assert "hinton" in presets_for_task("classification") and "det_kd" not in presets_for_task("classification")
    with pytest.raises(ConfigError, match=r"method 'hinton' does not apply to task 'detection' \(methods for "
                                          r"detection: labels_only, pseudo_boxes"):
        check_objective_for_task(DistillConfig(), "detection")  # the default method
    specs = check_objective_for_task(DistillConfig(method="det_kd", alpha=0.4, beta=0.5), "detection")
    assert [(s.name, s.weight) for s in specs] == [("ce", 0.4), ("pseudo_boxes", 0.3), ("heatmap_kd", 0.3),
                                                   ("pkd", 0.5)]  # β adds the task's feature term
    assert term_specs(DistillConfig(method="hinton", beta=0.5))[-1].name == "feature"
    # A task no term names (a user's own, with its own terms) is not judged by the tags.
    assert check_objective_for_task(DistillConfig(), "toy_task_no_term_names")[1].name == "kd"


def test_tune_searches_only_the_tasks_presets():
    from distill_export.tune import candidate_methods

    assert candidate_methods(None, "detection") == ["pseudo_boxes", "heatmap_kd", "det_kd", "det_pkd"]
    assert candidate_methods(None, "classification") == [
        "hinton", "ls_kd", "dkd", "dist", "c2kd", "pseudo_label", "kd_pseudo_label"]  # as before
    with pytest.raises(ConfigError, match="method 'hinton' does not apply to task 'detection'"):
        candidate_methods(["det_kd", "hinton"], "detection")
    assert candidate_methods(["det_kd"]) == ["det_kd"]  # the CLI's early check knows no task yet


def test_register_term_checks_the_tag():
    class Bad(Term):
        name, tasks = "bad_tag_term", "detection"  # a string, not a tuple

    with pytest.raises(TypeError, match="tasks must be a tuple"):
        register_term(Bad)


# ----- ce (labels) on boxes ----------------------------------------------------------------------
def test_labels_term_uses_the_tasks_supervised_loss_on_labeled_rows_only():
    truth, labels = boxes()
    student = render_heads(truth) + torch.randn(4, C + 4, H, W, generator=torch.Generator().manual_seed(1))
    sup = lambda out, tgt: detection_loss(out, tgt, C, OUTPUT_STRIDE)  # noqa: E731
    ce = term_class("ce")()
    ce.setup(SetupInfo(C, 0, 0, task="detection", supervised_loss=sup))
    value, grad = loss_and_grad(ce, student, None)
    _close(value, sup(student[[0, 2]], labels[[0, 2]]))
    assert grad[[1, 3]].abs().sum() == 0 and grad[[0, 2]].abs().sum() > 0
    value, grad = loss_and_grad(ce, student, None, labels=torch.full_like(labels, IGNORE))
    assert value == 0 and torch.isfinite(grad).all() and grad.abs().sum() == 0


# ----- pseudo_boxes ------------------------------------------------------------------------------
def test_pseudo_boxes_from_a_perfect_teacher_are_the_true_boxes_of_the_unlabeled_rows():
    truth, _ = boxes()
    teacher = render_heads(truth)
    student = torch.randn(4, C + 4, H, W, generator=torch.Generator().manual_seed(2))
    value, grad = loss_and_grad(term_class("pseudo_boxes")(threshold=0.5), student, teacher)
    _close(value, detection_loss(student[[1, 3]], truth[[1, 3]], C, OUTPUT_STRIDE))
    assert grad[[0, 2]].abs().sum() == 0  # labeled rows are left to the labels term
    # The student's outputs on labeled rows do not matter.
    other = student.clone()
    other[[0, 2]] = 100.0
    _close(loss_and_grad(term_class("pseudo_boxes")(threshold=0.5), other, teacher)[0], value)


def test_pseudo_boxes_are_smaller_near_the_teacher():
    truth, _ = boxes()
    teacher = render_heads(truth)
    noise = torch.randn(4, C + 4, H, W, generator=torch.Generator().manual_seed(3))
    term = term_class("pseudo_boxes")()
    values = [loss_and_grad(term, teacher + eps * noise, teacher)[0] for eps in (0.0, 0.5, 2.0)]
    assert values[0] < values[1] < values[2]


def test_pseudo_boxes_without_a_confident_teacher_is_zero_not_nan():
    truth, _ = boxes()
    student = torch.randn(4, C + 4, H, W, generator=torch.Generator().manual_seed(4))
    teacher = render_heads(truth, peak=0.3)  # every peak below the threshold
    value, grad = loss_and_grad(term_class("pseudo_boxes")(threshold=0.4), student, teacher)
    assert value == 0 and torch.isfinite(grad).all() and grad.abs().sum() == 0
    assert loss_and_grad(term_class("pseudo_boxes")(threshold=0.25), student, teacher)[0] > 0  # inclusive-ish


# ----- heatmap_kd --------------------------------------------------------------------------------
def test_heatmap_kd_is_zero_at_the_teacher_and_grows_away_from_it():
    truth, _ = boxes()
    teacher = render_heads(truth, peak=0.9) + 0.3 * torch.randn(4, C + 4, H, W, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(4, C + 4, H, W, generator=torch.Generator().manual_seed(6))
    term = term_class("heatmap_kd")()
    values = [loss_and_grad(term, teacher + eps * noise, teacher)[0] for eps in (0.0, 0.1, 0.5, 2.0)]
    assert values[0] == 0
    assert values[1] < values[2] < values[3]


def test_heatmap_kd_reads_the_boxes_at_the_teachers_peaks_only():
    truth, _ = boxes()
    teacher = render_heads(truth, peak=0.9)
    _, scores, _ = decode(teacher, C, OUTPUT_STRIDE)
    term = term_class("heatmap_kd")(threshold=0.5)
    at_peak, elsewhere = teacher.clone(), teacher.clone()
    c = truth[0, 0, 1:].view(2, 2).mean(0) / OUTPUT_STRIDE  # centre of row 0's first box, in cells
    at_peak[0, C, int(c[1]), int(c[0])] += 2.0  # its width
    elsewhere[0, C, 7, 0] += 2.0  # a cell with no object
    assert loss_and_grad(term, elsewhere, teacher)[0] == 0
    _close(loss_and_grad(term, at_peak, teacher)[0], 2.0 * 0.1 / int((scores >= 0.5).sum()))
    assert loss_and_grad(term_class("heatmap_kd")(threshold=0.5, regression_weight=0.0), at_peak, teacher)[0] == 0


# ----- pkd ---------------------------------------------------------------------------------------
def pkd_inputs(d_s=6, d_t=5, seed=7):
    g = torch.Generator().manual_seed(seed)
    truth, labels = boxes()
    return render_heads(truth), labels, torch.randn(4, d_s, H, W, generator=g), torch.randn(4, d_t, H, W, generator=g)


def pkd_loss(term, side, t_feats, teacher, labels):
    return term.loss(det_batch(teacher, teacher, labels=labels, t_feats=t_feats, side={"x": side}), "x")


def test_pkd_is_zero_at_the_teacher_grows_away_and_ignores_per_channel_affine_changes():
    teacher, labels, _, ft = pkd_inputs()
    term = term_class("pkd")(background_weight=0.2)
    noise = torch.randn(ft.shape, generator=torch.Generator().manual_seed(8))
    values = [pkd_loss(term, ft + eps * noise, ft, teacher, labels) for eps in (0.0, 0.3, 1.0, 3.0)]
    assert values[0] < 1e-10 and values[1] < values[2] < values[3]
    scale = torch.linspace(0.01, 50.0, ft.shape[1]).view(1, -1, 1, 1)
    shift = torch.linspace(-20.0, 7.0, ft.shape[1]).view(1, -1, 1, 1)
    student = ft + noise
    _close(pkd_loss(term, student, ft * scale + shift, teacher, labels), pkd_loss(term, student, ft, teacher, labels),
           atol=1e-5, rtol=1e-4)
    # A per-position change (what a per-dimension standardisation of (D, h, w) maps does) is not.
    per_cell = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(9)) * 5 + 0.1
    moved = pkd_loss(term, student, ft * per_cell, teacher, labels) - pkd_loss(term, student, ft, teacher, labels)
    assert moved.abs() > 1e-3


def test_pkd_looks_near_objects_only_with_background_weight_zero():
    teacher, labels, _, ft = pkd_inputs()
    term = term_class("pkd")(background_weight=0.0)
    far = ft.clone()
    far[..., 0, 7] += 3.0  # a cell no box of boxes() overlaps, in any row
    near = ft.clone()
    near[..., 1, 1] += 3.0  # inside row 0's first box (and row 3's second)
    assert pkd_loss(term, far, ft, teacher, labels) < pkd_loss(term, near, ft, teacher, labels)
    # Normalisation is over the whole map, so a far change still moves the near cells a little;
    # with no object at all and no background weight there is nothing to imitate: 0, not NaN.
    empty = torch.full((4, 2, 5), float(IGNORE))
    nothing = render_heads(torch.full((4, 1, 5), -1.0))
    value = pkd_loss(term, far.requires_grad_(), ft, nothing, empty)
    value.backward()
    assert value == 0 and torch.isfinite(far.grad).all()


def test_pkd_projector_is_built_in_setup_and_trains_through_the_distill_module():
    teacher, labels, _, ft = pkd_inputs(d_t=5)

    class TinyDetector(nn.Module):
        feature_dim = 6

        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Conv2d(1, 6, 3, stride=4, padding=1), nn.Conv2d(6, C + 4, 1)

        def forward_features(self, x):
            f = torch.relu(self.body(x))
            return f, self.head(f)

    objective = Objective(term_specs(DistillConfig(terms=[{"name": "pkd"}, {"name": "heatmap_kd"}])))
    objective.setup(SetupInfo(C, 6, 5, task="detection"))
    module = DistillModule(TinyDetector(), objective)
    assert any(n.endswith("projector.weight") for n, _ in module.named_parameters())
    out, side = module(torch.randn(4, 1, SIZE, SIZE))
    assert side["0_pkd"].shape == (4, 5, H, W)
    teacher.requires_grad_()
    ft.requires_grad_()
    total, parts = objective(TermInputs(out, labels, teacher, ft, side))
    total.backward()
    assert set(parts) == {"pkd", "heatmap_kd"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert teacher.grad is None and ft.grad is None  # the teacher's side gets no gradient
    with pytest.raises(ConfigError, match="pkd term needs feature maps and the teacher returns none"):
        term_class("pkd")().setup(SetupInfo(C, 6, 0, task="detection"))


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"threshold": 1.0}, {"background_weight": -0.1},
                                 {"background_weight": 1.5}])
def test_pkd_refuses_bad_hyperparameters(bad):
    with pytest.raises(ConfigError, match="term pkd"):
        term_class("pkd")(**bad)


@pytest.mark.parametrize("name, bad", [("heatmap_kd", {"beta": 0.5}), ("heatmap_kd", {"threshold": 1.0}),
                                       ("heatmap_kd", {"regression_weight": -1.0}), ("pseudo_boxes", {"threshold": 0.0})])
def test_detection_terms_refuse_bad_hyperparameters(name, bad):
    with pytest.raises(ConfigError, match=f"term {name}"):
        term_class(name)(**bad)


# ----- gradients reach the student only ------------------------------------------------------------
@pytest.mark.parametrize("name", ["pseudo_boxes", "heatmap_kd"])
def test_no_gradient_reaches_the_teacher(name):
    truth, _ = boxes()
    teacher = render_heads(truth, peak=0.9).requires_grad_()
    student = torch.randn(4, C + 4, H, W, generator=torch.Generator().manual_seed(10)).requires_grad_()
    term_class(name)().loss(det_batch(student, teacher), "x").backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


# ----- an overfit probe ----------------------------------------------------------------------------
def test_pseudo_boxes_from_a_ground_truth_teacher_teach_a_tiny_detector():
    """Bright squares at the true boxes, every row unlabeled: 50 Adam steps on pseudo_boxes alone
    bring the student's CenterNet loss against the truth well down."""
    torch.manual_seed(0)
    truth, _ = boxes()
    images = torch.zeros(4, 1, SIZE, SIZE)
    for b, rows in enumerate(truth):
        for cls, x1, y1, x2, y2 in rows.tolist():
            if cls >= 0:
                images[b, 0, int(y1):int(y2), int(x1):int(x2)] = 0.3 * (cls + 1)
    student = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(32, C + 4, 1))
    teacher, unlabeled = render_heads(truth), torch.full_like(truth, IGNORE)
    term = term_class("pseudo_boxes")()
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    before = detection_loss(student(images), truth, C, OUTPUT_STRIDE).item()
    for _ in range(50):
        loss = term.loss(det_batch(student(images), teacher, labels=unlabeled), "x")
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = detection_loss(student(images), truth, C, OUTPUT_STRIDE).item()
    assert after < 0.3 * before, (before, after)


def test_a_config_with_a_term_of_another_task_is_refused_at_load():
    """validate_config runs the task check, so `run` fails before any data is read (shown on
    classification: tasks/detection registers itself elsewhere)."""
    from distill_export.config import RunConfig, validate_config

    config = RunConfig()
    validate_config(config)  # hinton on classification
    config.distill.method = "det_kd"
    with pytest.raises(ConfigError, match="method 'det_kd' does not apply to task 'classification'"):
        validate_config(config)
    config.distill.terms = [{"name": "ce"}, {"name": "heatmap_kd"}]
    with pytest.raises(ConfigError, match="term 'heatmap_kd' does not apply to task 'classification'"):
        validate_config(config)
