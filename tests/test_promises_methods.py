"""What the distillation methods promise, checked at the level of behaviour (issue 25).

Each test pins one promise of distill_export/methods/: a term's formula against a hand
computation (PKD's weighted Pearson imitation, the soft focal BCE of heatmap KD, the logit
standardisation's bounds), PKD's student map resized to the teacher's and its object cells
found at the heads-to-features stride, the objective's weights and its DDP share (the
distributed helpers faked, since the branch needs ranks), the fused-KD branch that folds the
weight into the kernel (forced on CPU: the reference multiplies by the same scale), and the
one-line refusals of the registry, the presets and every term's hyperparameters.
All fast: no training, no process group.
"""

from __future__ import annotations

import math
import uuid
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_export import registry
from distill_export.errors import ConfigError, LossInputError
from distill_export.methods import (
    PRESETS, DistillModule, Objective, SetupInfo, Term, TermInputs, TermSpec, preset_tasks,
    presets_for_task, register_term, teacher_needs, term_class, term_names, term_specs,
)
from distill_export.methods import base as methods_base
from distill_export.methods import ce as ce_mod
from distill_export.methods import dist as dist_mod
from distill_export.methods import kd as kd_mod
from distill_export.methods.heatmap_kd import soft_focal_bce
from distill_export.methods.ls_kd import standardise
from distill_export.methods.pkd import box_mask, pearson_normalise
from distill_export.methods.pseudo_boxes import head_classes, teacher_boxes
from distill_export.nets.centernet import OUTPUT_STRIDE, detection_loss

from _methods_helpers import IGNORE, _close, _random


def _cfg(**overrides):
    base = dict(method="hinton", terms=[], temperature=4.0, alpha=0.5, beta=0.0)
    base.update(overrides)
    return SimpleNamespace(**base)


def _refused(fn) -> str:
    with pytest.raises(ConfigError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def _value(term, batch, slot="0_term"):
    return term.loss(batch, slot).detach()


# --- every term's hyperparameters: documented defaults, one-line refusals naming term and key ---


def test_every_term_keeps_its_documented_defaults():
    """The defaults the docs and papers give (DKD's 1 and 8, GFL's β = 2), as the report records them."""
    want = {
        "ce": {}, "feature": {}, "kd": {"temperature": 4.0}, "ls_kd": {"temperature": 2.0},
        "dkd": {"temperature": 4.0, "tckd_weight": 1.0, "nckd_weight": 8.0},
        "dist": {"temperature": 1.0, "inter_weight": 1.0, "intra_weight": 1.0},
        "selective_kd": {"temperature": 4.0}, "pseudo_label": {"threshold": 0.7},
        "pseudo_boxes": {"threshold": 0.35},
        "heatmap_kd": {"beta": 2.0, "threshold": 0.3, "regression_weight": 1.0},
        "pkd": {"threshold": 0.3, "background_weight": 0.1},
    }
    for name, params in want.items():
        assert term_class(name)().hyperparameters() == params, name


POSITIVE = "must be a finite number > 0"
TEMPERATURE = "must be a finite number >= 0.01"  # methods.base.MIN_TEMPERATURE: smaller overflows (issue 24, N9)
NON_NEGATIVE = "must be a finite number >= 0"
OPEN_UNIT = "must be in (0, 1)"


@pytest.mark.parametrize("name, key, bad, rule", [
    ("kd", "temperature", 0.0, TEMPERATURE), ("ls_kd", "temperature", -1.0, TEMPERATURE),
    ("selective_kd", "temperature", float("inf"), TEMPERATURE),
    ("dkd", "temperature", 0.0, TEMPERATURE), ("dkd", "tckd_weight", -1.0, NON_NEGATIVE),
    ("dkd", "nckd_weight", float("inf"), NON_NEGATIVE),
    ("dist", "temperature", 0.0, TEMPERATURE), ("dist", "inter_weight", -1.0, NON_NEGATIVE),
    ("dist", "intra_weight", -0.5, NON_NEGATIVE),
    ("pseudo_label", "threshold", 1.0, OPEN_UNIT), ("pseudo_boxes", "threshold", 0.0, OPEN_UNIT),
    ("heatmap_kd", "beta", 0.0, POSITIVE), ("heatmap_kd", "beta", 0.5, "must be >= 1"),
    ("heatmap_kd", "threshold", 1.0, OPEN_UNIT), ("heatmap_kd", "regression_weight", -1.0, NON_NEGATIVE),
    ("pkd", "threshold", 1.0, OPEN_UNIT), ("pkd", "background_weight", 1.5, "must be in [0, 1]"),
])
def test_a_bad_hyperparameter_is_refused_naming_the_term_and_the_key(name, key, bad, rule):
    message = _refused(lambda: term_class(name)(**{key: bad}))
    assert message == f"term {name}: {key} {rule}, got {bad}"


@pytest.mark.parametrize("name, key, edge", [
    ("heatmap_kd", "beta", 1.0), ("heatmap_kd", "beta", 1.5), ("pkd", "background_weight", 1.0),
    ("pkd", "background_weight", 0.0), ("dkd", "tckd_weight", 0.0), ("dist", "intra_weight", 0.0),
])
def test_the_edges_of_each_allowed_range_are_accepted(name, key, edge):
    assert term_class(name)(**{key: edge}).hyperparameters()[key] == edge


@pytest.mark.parametrize("name", ["feature", "pkd"])
@pytest.mark.parametrize("student_dim, teacher_dim, who", [(0, 5, "student"), (6, 0, "teacher")])
def test_a_feature_term_without_features_names_the_side_that_has_none(name, student_dim, teacher_dim, who):
    message = _refused(lambda: term_class(name)().setup(SetupInfo(3, student_dim, teacher_dim)))
    if name == "feature":
        assert message == (f"the feature term needs features and the {who} returns logits only: "
                           "drop the feature term (or set --beta 0)")
    else:
        assert message == f"the pkd term needs feature maps and the {who} returns none: drop the pkd term"


def test_one_feature_channel_is_enough_for_pkd():
    term = term_class("pkd")()
    term.setup(SetupInfo(3, 1, 2, task="detection"))
    assert term.student_side(torch.ones(1, 1, 2, 2), None).shape == (1, 2, 2, 2)


# --- the registry and the presets: refusals and what they return -----------------------------


def test_unknown_names_list_every_choice_comma_separated():
    assert _refused(lambda: term_class("hintonn")) == (
        f"unknown distillation term 'hintonn' (choices: {', '.join(term_names())})")
    assert _refused(lambda: term_specs(_cfg(method="fitnet"))) == (
        f"unknown distillation method 'fitnet' (choices: {', '.join(PRESETS)})")


def test_term_specs_refusals_say_what_is_wrong_in_one_line():
    assert _refused(lambda: term_specs(_cfg(terms=[{"name": "ce", "temperature": 2.0}]))) == (
        "term ce has no parameter 'temperature' (its parameters: none)")
    assert _refused(lambda: term_specs(_cfg(terms=[{"name": "dkd", "temprature": 2.0}]))) == (
        "term dkd has no parameter 'temprature' (its parameters: temperature, tckd_weight, nckd_weight)")
    assert _refused(lambda: term_specs(_cfg(terms=[{"name": "kd", "weight": 0}]))) == (
        "every distillation term has weight 0: nothing to train on")


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan")])
def test_a_preset_refuses_alpha_outside_zero_one(alpha):
    assert _refused(lambda: term_specs(_cfg(alpha=alpha))) == f"distill.alpha must be in [0, 1], got {alpha}"


@pytest.mark.parametrize("beta", [-1.0, float("inf"), float("nan")])
def test_a_preset_refuses_a_beta_that_is_not_finite_and_non_negative(beta):
    assert _refused(lambda: term_specs(_cfg(beta=beta))) == f"distill.beta must be a finite number >= 0, got {beta}"


def test_teacher_needs_is_what_the_configured_terms_read():
    assert teacher_needs(_cfg(method="labels_only")) == frozenset()
    assert teacher_needs(_cfg(method="hinton")) == {"logits"}
    assert teacher_needs(_cfg(method="hinton", beta=0.5)) == {"logits", "features"}
    assert teacher_needs(_cfg(method="det_pkd")) == {"logits", "features"}
    assert teacher_needs(_cfg(terms=[{"name": "feature"}])) == {"features"}


def test_the_term_list_is_complete_even_when_asked_first(monkeypatch):
    """term_names imports the package's term modules itself; it does not rely on an earlier import."""
    monkeypatch.setattr(registry, "_done", set())
    assert {"ce", "kd", "dkd", "dist", "pkd", "heatmap_kd", "pseudo_boxes"} <= set(term_names())


def test_register_term_refusals_name_the_class_and_the_fault():
    def cls(**attrs):
        return type("Custom", (Term,), attrs)

    for attrs, words in [
        ({}, "Custom has no name"),
        ({"name": "kd"}, "term 'kd' is registered twice"),
        ({"name": "x_str_tasks", "tasks": "detection"}, "term 'x_str_tasks': tasks must be a tuple of task names"),
        ({"name": "x_int_tasks", "tasks": (1,)}, "term 'x_int_tasks': tasks must be a tuple of task names"),
        ({"name": "x_needs", "needs": frozenset({"masks", "attention"})},
         "term 'x_needs' needs unknown teacher outputs ['attention', 'masks']"),
    ]:
        with pytest.raises(TypeError) as info:
            register_term(cls(**attrs))
        assert str(info.value).startswith(words), (attrs, str(info.value))
    assert not {"x_str_tasks", "x_int_tasks", "x_needs"} & set(methods_base._TERMS)


@pytest.fixture
def toy_term():
    """A registered term for a task of its own ("toy") and classification, whose student side
    reads the logits."""
    name = f"toy_{uuid.uuid4().hex[:8]}"

    class Toy(Term):
        needs = frozenset({"logits"})
        tasks = ("toy", "classification")

        def student_side(self, features, logits):
            return 2 * logits

        def loss(self, batch, slot):
            return batch.student_side[slot].mean()

    Toy.name = name
    register_term(Toy)
    yield name
    methods_base._TERMS.pop(name, None)


def test_a_preset_applies_to_the_tasks_all_its_terms_share(toy_term, monkeypatch):
    monkeypatch.setitem(PRESETS, "toy_mix", (("kd", toy_term), "kd + toy"))
    monkeypatch.setitem(PRESETS, "toy_only", ((toy_term,), "toy"))
    assert preset_tasks("toy_mix") == ("classification",)
    assert "toy_mix" not in presets_for_task("toy") and "toy_only" in presets_for_task("toy")
    # β adds the feature term of the preset's (first) task; a task without one gets `feature`
    assert [s.name for s in term_specs(_cfg(method="toy_only", beta=0.5))] == ["ce", toy_term, "feature"]


def test_distill_module_hands_each_term_the_student_features_and_logits(toy_term):
    class Student(nn.Module):
        def forward_features(self, x):
            return x + 1, 3 * x

    module = DistillModule(Student(), Objective([TermSpec(toy_term, 1.0)]))
    x = torch.arange(6.0).reshape(2, 3)
    logits, side = module(x)
    _close(side[f"0_{toy_term}"], 2 * logits)


# --- the objective: weights, parts, the DDP share, the fused-KD branch -----------------------


def _objective_total_grad(objective, s, t, y):
    z = s.detach().clone().requires_grad_(True)
    total, parts = objective(TermInputs(student_logits=z, labels=y, teacher_logits=t))
    (grad,) = torch.autograd.grad(total, z)
    return total.detach(), grad, parts


def _one_process_values(s, t, y):
    batch = TermInputs(student_logits=s, labels=y, teacher_logits=t)
    return _value(term_class("ce")(), batch), _value(term_class("kd")(temperature=2.0), batch)


def _specs():
    return [TermSpec("ce", 0.3), TermSpec("kd", 0.7, {"temperature": 2.0})]


def test_a_zero_weight_term_is_skipped_and_the_terms_after_it_still_count():
    s, t, y = _random()
    objective = Objective([TermSpec("ce", 0.0), TermSpec("kd", 1.0, {"temperature": 2.0})])
    total, _, parts = _objective_total_grad(objective, s, t, y)
    _close(total, _one_process_values(s, t, y)[1])
    assert set(parts) == {"kd"}


def test_two_terms_of_one_kind_are_logged_apart():
    s, t, y = _random()
    objective = Objective([TermSpec("kd", 0.5, {"temperature": 1.0}), TermSpec("kd", 0.5, {"temperature": 4.0})])
    _, _, parts = _objective_total_grad(objective, s, t, y)
    batch = TermInputs(student_logits=s, labels=y, teacher_logits=t)
    assert set(parts) == {"kd", "1_kd"}
    _close(parts["kd"], _value(term_class("kd")(temperature=1.0), batch))
    _close(parts["1_kd"], _value(term_class("kd")(temperature=4.0), batch))


@pytest.fixture
def fake_ddp(monkeypatch):
    """Objective.forward as on one rank of several: row_share gives `share` (recording the row
    count it is asked about); the labels term's global count is the local one."""
    import distill_export.distributed as distributed

    state = SimpleNamespace(share=0.25, asked=[])

    def row_share(n):
        state.asked.append(n)
        return state.share

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "row_share", row_share)
    monkeypatch.setattr(ce_mod, "global_count", lambda count: count.clamp(min=1))
    return state


@pytest.fixture
def folded(monkeypatch):
    """The fused-KD branch (CUDA only) forced on CPU: kd_loss's reference then multiplies its loss
    by the scale the objective passes, as the fused kernel does."""
    monkeypatch.setattr(kd_mod.HintonKD, "folds_weight", lambda self, batch: True)


def _check_share(s, t, y, share, total, parts):
    ce, kd = _one_process_values(s, t, y)
    _close(total, 0.3 * ce + 0.7 * share * kd)  # only the row-mean term (kd) takes the share
    _close(parts["ce"], ce)
    _close(parts["kd"], kd)  # parts are unweighted, unshared


def test_under_ddp_a_row_mean_term_takes_its_rank_share_and_a_global_one_does_not(fake_ddp):
    s, t, y = _random(n_rows=6)
    total, _, parts = _objective_total_grad(Objective(_specs()), s, t, y)
    assert fake_ddp.asked == [6]  # the share of this rank's rows
    _check_share(s, t, y, 0.25, total, parts)


def test_the_folded_kd_branch_gives_the_weighted_sum_and_logs_unweighted_values(folded):
    s, t, y = _random()
    ce, kd = _one_process_values(s, t, y)
    total, grad, parts = _objective_total_grad(Objective(_specs()), s, t, y)
    _close(total, 0.3 * ce + 0.7 * kd)
    _close(parts["kd"], kd)
    # the same gradient as the unfolded sum
    z = s.detach().clone().requires_grad_(True)
    batch = TermInputs(student_logits=z, labels=y, teacher_logits=t)
    (want,) = torch.autograd.grad(0.3 * term_class("ce")().loss(batch, "a")
                                  + 0.7 * term_class("kd")(temperature=2.0).loss(batch, "b"), z)
    _close(grad, want)


def test_the_folded_kd_branch_under_ddp_folds_weight_times_share(folded, fake_ddp):
    s, t, y = _random()
    total, _, parts = _objective_total_grad(Objective(_specs()), s, t, y)
    _check_share(s, t, y, 0.25, total, parts)
    fake_ddp.share = 0.0  # a rank whose rows are none of the global batch: nothing to undo, no NaN
    total, _, parts = _objective_total_grad(Objective(_specs()), s, t, y)
    assert math.isfinite(float(parts["kd"]))
    _close(total, 0.3 * _one_process_values(s, t, y)[0])


def test_a_folding_term_is_handed_its_weight_times_the_share_and_its_own_slot(folded, monkeypatch):
    """What the fused kernel receives: on CPU the folded and unfolded sums are the same numbers, so
    the hand-over itself is what shows the branch ran (on CUDA it decides the gradient's rounding)."""
    handed = []
    loss = kd_mod.HintonKD.loss

    def spy(self, batch, slot, scale=1.0):
        handed.append((slot, scale))
        return loss(self, batch, slot, scale=scale)

    monkeypatch.setattr(kd_mod.HintonKD, "loss", spy)
    s, t, y = _random()
    _objective_total_grad(Objective(_specs()), s, t, y)
    assert handed == [("1_kd", 0.7)]
    import distill_export.distributed as distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "row_share", lambda n: 0.5)
    monkeypatch.setattr(ce_mod, "global_count", lambda count: count.clamp(min=1))
    handed.clear()
    _objective_total_grad(Objective(_specs()), s, t, y)
    assert handed == [("1_kd", 0.35)]


def test_the_kd_impl_setting_reaches_kd_loss_and_decides_the_folding(monkeypatch):
    """impl="fused" on a CPU without TRITON_INTERPRET is refused by kd_loss: the term passed it on."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    s, t, y = _random()
    batch = TermInputs(student_logits=s, labels=y, teacher_logits=t)
    for name in ("kd", "ls_kd"):
        term = term_class(name)()
        term.impl = "fused"
        with pytest.raises(LossInputError, match="impl='fused' needs CUDA"):
            term.loss(batch, "0")
    kd = term_class("kd")()
    assert not kd.folds_weight(batch)  # auto on CPU: the reference, the objective weighs after
    kd.impl = "fused"
    assert kd.folds_weight(batch)


# --- DIST under DDP: inter is this rank's share, intra correlates the gathered batch ----------


def _pearson_mean(a, b):
    a, b = a.double(), b.double()
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean()


def test_dist_under_ddp_shares_inter_and_correlates_every_ranks_rows(monkeypatch):
    T = 2.0
    s, t, _ = _random(n_rows=4, seed=3)
    s_other, t_other, _ = _random(n_rows=3, seed=4)  # another rank's rows
    p = lambda z: (z / T).softmax(-1)  # noqa: E731
    others = [p(s_other), p(t_other)]
    asked = []
    monkeypatch.setattr(dist_mod, "is_distributed", lambda: True)
    monkeypatch.setattr(dist_mod, "row_share", lambda n: asked.append(n) or 0.8)
    monkeypatch.setattr(dist_mod, "gather_rows", lambda x: torch.cat([x, others.pop(0)]))
    term = term_class("dist")(temperature=T, inter_weight=1.5, intra_weight=0.5)
    got = _value(term, TermInputs(student_logits=s, labels=torch.zeros(4, dtype=torch.long), teacher_logits=t))
    inter = 1 - _pearson_mean(p(s), p(t))
    intra = 1 - _pearson_mean(torch.cat([p(s), p(s_other)]).t(), torch.cat([p(t), p(t_other)]).t())
    assert asked == [4]
    _close(got, T**2 * (1.5 * 0.8 * inter + 0.5 * intra))


# --- classification terms: the hand formulas at their edges ------------------------------------


def test_selective_kd_is_a_mean_over_rows_even_for_one_row():
    s, t, y = _random(n_rows=1, seed=5, unlabeled=())
    s = t + 0.3 * s  # ranks the classes as the teacher does, so the row is selected
    one = _value(term_class("selective_kd")(), TermInputs(student_logits=s, labels=y, teacher_logits=t))
    two = _value(term_class("selective_kd")(), TermInputs(student_logits=s.repeat(2, 1), labels=y.repeat(2),
                                                          teacher_logits=t.repeat(2, 1)))
    assert float(one) > 0
    _close(one, two)


def test_standardised_logits_keep_the_order_and_bounds_of_a_z_score_even_when_nearly_flat():
    rows = torch.tensor([[0.0, 1e-7, 2e-7], [0.0, 1e-7, 3e-7], [3.0, -1.0, 0.5], [2.0, 2.0, 2.0]])
    z = standardise(rows)
    assert bool(torch.isfinite(z).all())
    bound = (3 - 1) / math.sqrt(3)  # the largest |z| any 3 values can have (unbiased std)
    assert float(z.abs().max()) <= bound + 1e-6
    assert torch.equal(z[:3].argsort(-1), rows[:3].argsort(-1))
    _close(z[2], (rows[2] - rows[2].mean()) / rows[2].std(), atol=1e-6)


# --- detection terms ----------------------------------------------------------------------------


def test_soft_focal_bce_is_the_quality_focal_loss_summed():
    s = torch.tensor([[-2.0, 0.0], [1.0, 3.0]])
    target = torch.tensor([[0.1, 0.5], [0.9, 0.2]])
    want = 0.0
    for z, q in zip(s.flatten().tolist(), target.flatten().tolist()):
        p = 1 / (1 + math.exp(-z))
        want += abs(p - q) ** 2 * -(q * math.log(p) + (1 - q) * math.log(1 - p))
    _close(soft_focal_bce(s, target, 2.0), torch.tensor(want))


def test_head_classes_refuses_anything_but_c_plus_4_maps():
    assert head_classes(torch.zeros(2, 5, 4, 4)) == 1  # one class: heat, size (2), offset (2)
    for shape in [(5, 8, 8), (2, 4, 8, 8)]:
        with pytest.raises(ValueError) as info:
            head_classes(torch.zeros(shape))
        assert str(info.value) == f"detection terms expect (B, C+4, h, w) heads, got {shape}"


def _quiet_heads(b=2, c=1, h=8, w=12):
    """Teacher heads that detect nothing (every heat logit -20)."""
    heads = torch.zeros(b, c + 4, h, w)
    heads[:, :c] = -20.0
    return heads


def _one_box_heads(b=2, c=1, h=8, w=12, row=1, cell=(3, 5), size=3.0):
    """Teacher heads with one confident object (class 0, `size` cells square) in row `row`."""
    heads = _quiet_heads(b, c, h, w)
    heads[row, 0, cell[0], cell[1]] = 5.0
    heads[row, c:c + 2, cell[0], cell[1]] = size
    return heads


def test_one_labeled_image_counts_in_the_labels_term_of_a_detector():
    term = term_class("ce")()
    mse = lambda out, labels: out.float().pow(2).mean()  # noqa: E731  the task's loss, a mean over rows
    term.setup(SetupInfo(1, 0, 0, task="detection", supervised_loss=mse))
    out = torch.arange(2 * 5 * 2 * 2, dtype=torch.float32).reshape(2, 5, 2, 2) / 10
    labels = torch.full((2, 1, 5), float(IGNORE))
    labels[0, 0] = torch.tensor([0.0, 1, 1, 5, 5])
    _close(_value(term, TermInputs(student_logits=out, labels=labels)), mse(out[:1], labels[:1]))


def test_one_confident_teacher_box_on_an_unlabeled_row_is_learned():
    teacher = _one_box_heads(h=8, w=8)
    student = _quiet_heads(h=8, w=8) + 0.1
    labels = torch.full((2, 1, 5), float(IGNORE))
    term = term_class("pseudo_boxes")()
    pseudo = teacher_boxes(teacher, term.threshold)
    assert int((pseudo[..., 0] >= 0).sum()) == 1
    got = _value(term, TermInputs(student_logits=student, labels=labels, teacher_logits=teacher))
    want = detection_loss(student[1:], pseudo[1:], 1, OUTPUT_STRIDE)
    assert float(got) > 0
    _close(got, want)


def test_pearson_normalise_gives_each_map_zero_mean_and_unit_population_variance():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 3, 4, 5, generator=g) * 3 + 7
    z = pearson_normalise(f)
    _close(z.mean(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-5)
    _close(z.pow(2).mean(dim=(-2, -1)), torch.ones(2, 3), atol=1e-4)  # population: / (h·w)
    flat = torch.tensor([[[[1.0, 1.0 + 2e-6], [1.0, 1.0 + 2e-6]]]])  # std 1e-6, of the size of eps
    z = pearson_normalise(flat)
    assert bool(torch.isfinite(z).all()) and float(z.abs().max()) <= 1.0  # eps only shrinks a z-score


def _pkd_by_hand(s, t, near, background_weight):
    """The module docstring's formula, in float64, from plain loops over images and channels."""
    s, t = s.double(), t.double()
    B, D, h, w = t.shape
    sq = torch.zeros(B, h, w, dtype=torch.float64)
    for b in range(B):
        for c in range(D):
            zs = (s[b, c] - s[b, c].mean()) / (s[b, c].std(correction=0) + 1e-6)
            zt = (t[b, c] - t[b, c].mean()) / (t[b, c].std(correction=0) + 1e-6)
            sq[b] += (zs - zt) ** 2 / D
    weight = background_weight + (1 - background_weight) * near.double()
    return (weight * sq).sum() / 2 / weight.sum()


def test_pkd_is_the_weighted_pearson_imitation_with_objects_found_at_the_heads_stride():
    """Heads 8x12 (input 32x48 px), features 4x6: a feature cell is 8 px. One labeled box
    [8, 8, 24, 16] px covers feature cells x 1..2, y 1 of image 0; image 1 is unlabeled and
    the teacher finds nothing."""
    g = torch.Generator().manual_seed(2)
    ft, fs = torch.randn(2, 3, 4, 6, generator=g), torch.randn(2, 3, 4, 6, generator=g)
    labels = torch.full((2, 1, 5), float(IGNORE))
    labels[0, 0] = torch.tensor([0.0, 8, 8, 24, 16])
    near = torch.zeros(2, 4, 6)
    near[0, 1, 1:3] = 1
    _close(box_mask(labels, 4, 6, 8.0), near)
    term = term_class("pkd")(background_weight=0.25)
    batch = TermInputs(student_logits=None, labels=labels, teacher_logits=_quiet_heads(h=8, w=12),
                       teacher_features=ft, student_side={"0_pkd": fs})
    _close(_value(term, batch, "0_pkd"), _pkd_by_hand(fs, ft, near, 0.25))


def test_pkd_resizes_the_student_map_to_the_teachers_bilinearly():
    g = torch.Generator().manual_seed(3)
    ft = torch.randn(2, 3, 4, 6, generator=g)
    labels = torch.full((2, 1, 5), float(IGNORE))
    labels[1, 0] = torch.tensor([0.0, 0, 0, 16, 16])
    term = term_class("pkd")(background_weight=0.5)
    for size in [(2, 3), (8, 12), (4, 3)]:
        fs = torch.randn(2, 3, *size, generator=g)
        batch = TermInputs(student_logits=None, labels=labels, teacher_logits=_quiet_heads(h=8, w=12),
                           teacher_features=ft, student_side={"s": fs})
        resized = F.interpolate(fs, size=(4, 6), mode="bilinear", align_corners=False)
        near = box_mask(labels, 4, 6, 8.0)
        _close(_value(term, batch, "s"), _pkd_by_hand(resized, ft, near, 0.5))


def test_pkd_treats_the_teachers_confident_boxes_as_objects_like_labeled_ones():
    g = torch.Generator().manual_seed(4)
    ft, fs = torch.randn(2, 3, 4, 6, generator=g), torch.randn(2, 3, 4, 6, generator=g)
    teacher = _one_box_heads()
    term = term_class("pkd")(background_weight=0.0)
    unlabeled = torch.full((2, 1, 5), float(IGNORE))
    seen_by_teacher = teacher_boxes(teacher, term.threshold)
    assert float(box_mask(seen_by_teacher, 4, 6, 8.0).sum()) > 0

    def loss(heads, labels):
        return _value(term, TermInputs(student_logits=None, labels=labels, teacher_logits=heads,
                                       teacher_features=ft, student_side={"s": fs}), "s")

    _close(loss(teacher, unlabeled), loss(_quiet_heads(), seen_by_teacher))
