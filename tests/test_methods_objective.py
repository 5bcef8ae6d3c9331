"""Objectives built from the term registry (distill_export/methods/objective.py, base.py).

Presets and explicit term lists, temperature inheritance, weights, ``needs``, the one-line
ConfigErrors for bad input, the trainable DistillModule (the feature projector is its
parameter and gets gradient through its forward), and a term registered from a test
without editing any project file.

Tolerances: fp32, C ≤ 7; the objective and the legacy ``kd_loss`` compute the same sums in a
different order, so ``ATOL = RTOL = 1e-5`` (a few ulps of O(1) values, with margin).
"""

from __future__ import annotations

import math
import uuid
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_export.config import DistillConfig
from distill_export.errors import ConfigError
from distill_export.losses.kd import kd_loss
from distill_export.methods import (
    PRESETS, DistillModule, Objective, SetupInfo, Term, TermInputs, TermSpec, preset_names, register_term,
    preset_tasks, term_class, term_names, term_specs,
)
from distill_export.methods import base as methods_base

from _methods_helpers import IGNORE, _close, _random
BUILTIN_TERMS = {"ce", "kd", "ls_kd", "dkd", "dist", "selective_kd", "pseudo_label", "feature",
                 "pseudo_boxes", "heatmap_kd", "pkd"}


def _cfg(**overrides):
    """What term_specs reads of a DistillConfig, with its defaults."""
    base = dict(method="hinton", terms=[], temperature=4.0, alpha=0.5, beta=0.0)
    base.update(overrides)
    return SimpleNamespace(**base)


def _objective_value_grad(objective, s, t, y):
    z = s.detach().clone().requires_grad_(True)
    total, parts = objective(TermInputs(student_logits=z, labels=y, teacher_logits=t))
    (grad,) = torch.autograd.grad(total, z)
    return total.detach(), grad, parts


def _one_line_config_error(fn, *match):
    with pytest.raises(ConfigError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and message.strip()
    for m in match:
        assert m in message, (m, message)
    return message


# --- the registry ---------------------------------------------------------------------------------


def test_every_builtin_term_is_registered():
    assert BUILTIN_TERMS <= set(term_names())
    for name in BUILTIN_TERMS:
        cls = term_class(name)
        assert cls.name == name and cls.summary
        assert set(cls.needs) <= {"logits", "features"}


def test_default_distill_config_builds_hinton():
    specs = term_specs(DistillConfig())
    assert [(s.name, s.weight) for s in specs] == [("ce", 0.5), ("kd", 0.5)]
    assert specs[1].params == {"temperature": DistillConfig().temperature}


# --- presets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 0.75])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_hinton_preset_equals_legacy_kd_loss(alpha, temperature):
    """α·ce + (1−α)·kd == kd_loss(s, t, y, T, α): CE over labeled rows, KD over every row."""
    s, t, y = _random(7, 5, seed=1, unlabeled=(0, 3, 4))
    objective = Objective(term_specs(_cfg(method="hinton", alpha=alpha, temperature=temperature)))
    total, grad, parts = _objective_value_grad(objective, s, t, y)
    z = s.clone().requires_grad_(True)
    legacy = kd_loss(z, t, y, temperature=temperature, alpha=alpha)
    (legacy_grad,) = torch.autograd.grad(legacy, z)
    _close(total, legacy.detach())
    _close(grad, legacy_grad)
    assert set(parts) == {"ce", "kd"}
    _close(alpha * parts["ce"] + (1 - alpha) * parts["kd"], total)


def test_hinton_preset_limits_of_alpha():
    s, t, y = _random(5, 4, seed=2)
    only_ce = Objective(term_specs(_cfg(alpha=1.0)))
    assert [sp.name for sp in only_ce.specs] == ["ce"]
    _close(_objective_value_grad(only_ce, s, t, y)[0], kd_loss(s, t, y, temperature=4.0, alpha=1.0))
    only_kd = Objective(term_specs(_cfg(alpha=0.0)))
    assert [sp.name for sp in only_kd.specs] == ["kd"]
    _close(_objective_value_grad(only_kd, s, t, y)[0], kd_loss(s, t, y, temperature=4.0, alpha=0.0))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_splits_one_minus_alpha(preset):
    names, _ = PRESETS[preset]
    specs = term_specs(_cfg(method=preset, alpha=0.4, beta=0.25))
    got = [(s.name, s.weight) for s in specs]
    if names:
        want = [("ce", 0.4)] + [(n, pytest.approx(0.6 / len(names))) for n in names]
    else:
        want = [("ce", 1.0)]  # labels_only: CE with all the weight
    feature = "pkd" if (preset_tasks(preset) or ("classification",))[0] == "detection" else "feature"
    assert got == want + [(feature, 0.25)]  # β adds the feature term of the preset's task
    objective = Objective(specs)
    assert len(objective.terms) == len(specs)


def test_preset_names_are_the_presets():
    assert preset_names() == list(PRESETS)
    assert {"labels_only", "hinton", "ls_kd", "dkd", "dist", "c2kd", "pseudo_label"} <= set(preset_names())


# --- explicit terms -------------------------------------------------------------------------------


def test_explicit_terms_are_a_weighted_sum():
    s, t, y = _random(6, 5, seed=3)
    items = [{"name": "kd", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.25},
             {"name": "dkd", "weight": 0.125, "temperature": 3.0, "nckd_weight": 2.0}]
    specs = term_specs(_cfg(method="no_such_preset", terms=items))  # explicit terms win over `method`
    assert [(sp.name, sp.weight) for sp in specs] == [("kd", 0.5), ("ce", 0.25), ("dkd", 0.125)]
    total, grad, parts = _objective_value_grad(Objective(specs), s, t, y)

    def by_hand(z):
        kd = kd_loss(z, t, None, temperature=2.0, alpha=0.0)
        ce = F.cross_entropy(z, y, ignore_index=IGNORE)
        batch = TermInputs(student_logits=z, labels=y, teacher_logits=t)
        dkd = term_class("dkd")(temperature=3.0, nckd_weight=2.0).loss(batch, "x")
        return 0.5 * kd + 0.25 * ce + 0.125 * dkd

    z = s.clone().requires_grad_(True)
    want = by_hand(z)
    (want_grad,) = torch.autograd.grad(want, z)
    _close(total, want.detach())
    _close(grad, want_grad)
    assert set(parts) == {"kd", "ce", "dkd"}
    assert items[0] == {"name": "kd", "weight": 0.5, "temperature": 2.0}  # the config is not mutated


def test_term_specs_round_trip_through_to_dict():
    specs = term_specs(_cfg(method="kd_pseudo_label", alpha=0.2, temperature=3.0))
    again = term_specs(_cfg(terms=[sp.to_dict() for sp in specs]))
    assert [(a.name, a.weight, a.params) for a in again] == [(b.name, b.weight, b.params) for b in specs]


def test_temperature_is_inherited_only_when_unset():
    specs = term_specs(_cfg(temperature=3.0, terms=[
        {"name": "kd"}, {"name": "ls_kd", "temperature": 1.5}, {"name": "ce"}, {"name": "pseudo_label"}]))
    assert specs[0].params == {"temperature": 3.0}
    assert specs[1].params == {"temperature": 1.5}
    # Terms without a temperature get none; every term's defaults are recorded (for the report).
    assert specs[2].params == {} and specs[3].params == {"threshold": 0.7}
    assert all(sp.weight == 1.0 for sp in specs)  # weight defaults to 1
    objective = Objective(specs)
    assert objective.terms["0_kd"].temperature == 3.0 and objective.terms["1_ls_kd"].temperature == 1.5
    # and the value is the one at the inherited T
    s, t, y = _random(4, 5, seed=4)
    only_kd = Objective(term_specs(_cfg(temperature=3.0, terms=[{"name": "kd"}])))
    _close(_objective_value_grad(only_kd, s, t, y)[0], kd_loss(s, t, None, temperature=3.0, alpha=0.0))


def test_weights_really_weigh():
    s, t, y = _random(6, 5, seed=5)

    def total(kd_weight, ce_weight):
        items = [{"name": "kd", "weight": kd_weight}, {"name": "ce", "weight": ce_weight}]
        value, _, parts = _objective_value_grad(Objective(term_specs(_cfg(terms=items))), s, t, y)
        return value, parts

    base, parts = total(0.5, 0.5)
    doubled, _ = total(1.0, 0.5)
    _close(doubled - base, 0.5 * parts["kd"])  # doubling kd's weight adds exactly one more 0.5·kd
    assert parts["kd"].item() > 0.01  # so the check above is not vacuous
    only_ce, parts_ce = total(0.0, 0.5)
    _close(only_ce, 0.5 * parts["ce"])
    assert "kd" not in parts_ce  # a zero-weight term is not computed


def test_zero_weight_term_is_never_evaluated():
    """A zero-weight feature term without features (and without setup) must not break the objective."""
    s, t, y = _random(4, 3, seed=6)
    objective = Objective(term_specs(_cfg(terms=[{"name": "ce"}, {"name": "feature", "weight": 0.0}])))
    total, _, parts = _objective_value_grad(objective, s, t, y)
    _close(total, F.cross_entropy(s, y, ignore_index=IGNORE))
    assert set(parts) == {"ce"}


def test_needs_is_the_union_of_the_terms_needs():
    def needs(**kw):
        return Objective(term_specs(_cfg(**kw))).needs

    assert needs(method="labels_only") == frozenset()
    assert needs(method="hinton") == frozenset({"logits"})
    assert needs(method="hinton", beta=0.5) == frozenset({"logits", "features"})
    assert needs(terms=[{"name": "ce"}, {"name": "feature"}]) == frozenset({"features"})
    assert needs(terms=[{"name": "dist"}, {"name": "pseudo_label"}, {"name": "feature"}]) == \
        frozenset({"logits", "features"})


def test_two_terms_of_one_kind_keep_their_own_settings():
    s, t, y = _random(5, 4, seed=7)
    items = [{"name": "kd", "weight": 0.5, "temperature": 1.0}, {"name": "kd", "weight": 0.5, "temperature": 4.0}]
    objective = Objective(term_specs(_cfg(terms=items)))
    assert list(objective.terms) == ["0_kd", "1_kd"]
    want = (0.5 * kd_loss(s, t, None, temperature=1.0, alpha=0.0)
            + 0.5 * kd_loss(s, t, None, temperature=4.0, alpha=0.0))
    _close(_objective_value_grad(objective, s, t, y)[0], want)


def test_kd_impl_reaches_the_kd_terms():
    objective = Objective(term_specs(_cfg(terms=[{"name": "kd"}, {"name": "ls_kd"}, {"name": "ce"}])),
                          kd_impl="reference")
    assert objective.terms["0_kd"].impl == "reference" and objective.terms["1_ls_kd"].impl == "reference"


# --- bad input: one-line ConfigErrors ---------------------------------------------------------------


def test_unknown_term_lists_the_choices():
    message = _one_line_config_error(lambda: term_specs(_cfg(terms=[{"name": "hintonn"}])), "hintonn")
    for name in BUILTIN_TERMS:
        assert name in message


def test_unknown_preset_lists_the_choices():
    message = _one_line_config_error(lambda: term_specs(_cfg(method="fitnet")), "fitnet")
    for name in PRESETS:
        assert name in message


def test_unknown_term_parameter():
    _one_line_config_error(lambda: term_specs(_cfg(terms=[{"name": "kd", "temprature": 2.0}])),
                           "temprature", "temperature")
    _one_line_config_error(lambda: term_specs(_cfg(terms=[{"name": "ce", "temperature": 2.0}])), "temperature")


@pytest.mark.parametrize("items", [
    [{"name": "kd", "weight": 0.0}, {"name": "ce", "weight": 0.0}],
    [{"name": "ce", "weight": 0}],
])
def test_all_weights_zero(items):
    _one_line_config_error(lambda: term_specs(_cfg(terms=items)), "weight")


def test_all_weights_zero_via_a_preset():
    # labels_only keeps CE at weight 1, so only an explicit list can zero everything; hinton with α=1 is CE only.
    assert [s.name for s in term_specs(_cfg(method="labels_only", alpha=0.0))] == ["ce"]


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5, -0.2, float("nan")])
def test_threshold_outside_open_unit_interval(threshold):
    _one_line_config_error(lambda: term_specs(_cfg(terms=[{"name": "pseudo_label", "threshold": threshold}])),
                           "threshold")


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf"), "heavy"])
def test_bad_weight(weight):
    _one_line_config_error(lambda: term_specs(_cfg(terms=[{"name": "kd", "weight": weight}, {"name": "ce"}])),
                           "weight")


@pytest.mark.parametrize("name", ["kd", "ls_kd", "dkd", "dist", "selective_kd"])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_temperature(name, temperature):
    _one_line_config_error(lambda: term_specs(_cfg(terms=[{"name": name, "temperature": temperature}])),
                           "temperature")
    # inherited from distill.temperature too
    _one_line_config_error(lambda: term_specs(_cfg(temperature=temperature, terms=[{"name": name}])),
                           "temperature")


@pytest.mark.parametrize("param", ["tckd_weight", "nckd_weight"])
def test_negative_dkd_weights(param):
    _one_line_config_error(lambda: term_specs(_cfg(terms=[{"name": "dkd", param: -1.0}])), param)


@pytest.mark.parametrize("item", ["kd", {"weight": 1.0}, None])
def test_malformed_term_entry(item):
    _one_line_config_error(lambda: term_specs(_cfg(terms=[item])), "distill.terms[0]")


def test_config_errors_are_raised_before_any_objective_is_built():
    """term_specs builds each term once, so a bad hyperparameter fails there, not in the trainer."""
    with pytest.raises(ConfigError):
        term_specs(_cfg(terms=[{"name": "ce"}, {"name": "pseudo_label", "threshold": 2.0}]))


# --- the trainable module ---------------------------------------------------------------------------


class _TinyStudent(nn.Module):
    """forward_features(x) -> (features (B, 4), logits (B, 3)), as the project's SplitNet."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def forward_features(self, x):
        feats = torch.tanh(self.backbone(x))
        return feats, self.head(feats)

    def forward(self, x):
        return self.forward_features(x)[1]


def test_feature_projector_is_a_parameter_of_distill_module_and_learns_through_its_forward():
    torch.manual_seed(0)
    objective = Objective(term_specs(_cfg(method="hinton", beta=0.5)))
    objective.setup(SetupInfo(num_classes=3, student_feature_dim=4, teacher_feature_dim=2))
    module = DistillModule(_TinyStudent(), objective)
    slot = next(k for k in objective.terms if k.endswith("_feature"))
    projector = objective.terms[slot].projector
    # In DistillModule.parameters() (what DDP and the optimiser see), by identity:
    ids = {id(p) for p in module.parameters()}
    assert id(projector.weight) in ids and id(projector.bias) in ids
    assert f"objective.terms.{slot}.projector.weight" in dict(module.named_parameters())
    assert f"objective.terms.{slot}.projector.weight" in module.state_dict()

    x = torch.randn(6, 5)
    logits, side = module(x)
    assert set(side) == {slot} and side[slot].shape == (6, 2)
    y = torch.tensor([0, IGNORE, 2, 1, IGNORE, 0])
    batch = TermInputs(student_logits=logits, labels=y, teacher_logits=torch.randn(6, 3),
                       teacher_features=torch.randn(6, 2), student_side=side)
    total, parts = objective(batch)
    assert set(parts) == {"ce", "kd", "feature"}
    total.backward()
    assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0
    assert module.student.backbone.weight.grad.abs().sum() > 0  # the feature loss reaches the student too
    # The feature part is MSE(projection, teacher features).
    _close(parts["feature"], F.mse_loss(side[slot].detach(), batch.teacher_features))


def test_feature_term_with_a_logits_only_teacher_fails_at_setup():
    objective = Objective(term_specs(_cfg(method="hinton", beta=0.5)))
    _one_line_config_error(
        lambda: objective.setup(SetupInfo(num_classes=3, student_feature_dim=4, teacher_feature_dim=0)), "teacher")


def test_distill_module_without_learned_parts():
    objective = Objective(term_specs(_cfg(method="dkd")))
    objective.setup(SetupInfo(num_classes=3, student_feature_dim=4, teacher_feature_dim=0))  # no features needed
    student = _TinyStudent()
    module = DistillModule(student, objective)
    assert {id(p) for p in module.parameters()} == {id(p) for p in student.parameters()}
    logits, side = module(torch.randn(2, 5))
    assert side == {} and logits.shape == (2, 3)


# --- adding a method is one file: a term registered from here ---------------------------------------


def test_a_new_term_registered_outside_the_package_works_end_to_end():
    name = f"test_l1_{uuid.uuid4().hex[:8]}"

    class ScaledL1(Term):
        needs = frozenset({"logits"})
        summary = "test-only: scale · mean |s/T − t/T|"

        def __init__(self, temperature: float = 1.0, scale: float = 1.0):
            super().__init__()
            self.temperature = float(temperature)
            self.scale = float(scale)

        def loss(self, batch, slot):
            T = self.temperature
            return self.scale * (batch.student_logits / T - batch.teacher_logits / T).abs().mean()

    ScaledL1.name = name
    assert name not in methods_base._TERMS
    try:
        register_term(ScaledL1)
        assert name in term_names()
        with pytest.raises(TypeError):
            register_term(ScaledL1)  # a name is registered once
        specs = term_specs(_cfg(temperature=2.0, terms=[{"name": name, "weight": 0.5, "scale": 3.0},
                                                         {"name": "ce", "weight": 0.5}]))
        assert specs[0].params == {"scale": 3.0, "temperature": 2.0}  # inherits distill.temperature
        objective = Objective(specs)
        assert objective.needs == frozenset({"logits"})
        assert objective.terms[f"0_{name}"].hyperparameters() == {"temperature": 2.0, "scale": 3.0}
        s, t, y = _random(4, 3, seed=8)
        total, _, parts = _objective_value_grad(objective, s, t, y)
        want = 0.5 * 3.0 * (s / 2 - t / 2).abs().mean() + 0.5 * F.cross_entropy(s, y, ignore_index=IGNORE)
        _close(total, want)
        assert name in parts
        _one_line_config_error(lambda: term_specs(_cfg(terms=[{"name": name, "shift": 1.0}])), "shift")
    finally:
        methods_base._TERMS.pop(name, None)
    _one_line_config_error(lambda: term_class(name), name)


def test_register_term_rejects_bad_classes():
    class NoName(Term):
        pass

    class BadNeeds(Term):
        name = f"test_bad_{uuid.uuid4().hex[:8]}"
        needs = frozenset({"attention_maps"})

    with pytest.raises(TypeError):
        register_term(NoName)
    with pytest.raises(TypeError):
        register_term(BadNeeds)
    assert BadNeeds.name not in methods_base._TERMS
    with pytest.raises(TypeError):
        register_term(term_class("kd"))  # a built-in name cannot be taken twice


def test_term_spec_to_dict():
    assert TermSpec("kd", 0.5, {"temperature": 4.0}).to_dict() == {"name": "kd", "weight": 0.5, "temperature": 4.0}
    assert math.isclose(term_specs(_cfg(method="c2kd", alpha=0.25))[1].weight, 0.75)
