"""An objective: a weighted sum of registered terms, chosen by a preset name or listed in YAML.

    distill:
      method: hinton            # a preset: α·ce + (1−α)·<its distillation terms> + β·feature
      terms:                    # or explicit terms (this wins over `method`; a --method flag replaces them)
        - {name: kd, weight: 0.5, temperature: 4}
        - {name: ce, weight: 0.5}

A term that takes a temperature and does not set one gets distill.temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill_export.errors import ConfigError
from distill_export.methods.base import (
    SetupInfo, TermInputs, check_terms_for_task, term_class, term_names, term_parameters,
)

# Preset name -> (distillation terms sharing the (1−α) weight, what it is). Data, not code.
PRESETS: dict[str, tuple[tuple[str, ...], str]] = {
    "labels_only": ((), "CE on labeled rows only (no teacher): the baseline's objective"),
    "hinton": (("kd",), "Hinton KD on every row + CE on labeled rows"),
    "ls_kd": (("ls_kd",), "KD on standardised logits + CE"),
    "dkd": (("dkd",), "decoupled KD + CE"),
    "dist": (("dist",), "DIST relation matching + CE"),
    "c2kd": (("selective_kd",), "selective non-target KD (rank-agreement mask) + CE"),
    "pseudo_label": (("pseudo_label",), "teacher pseudo-labels on unlabeled rows + CE"),
    "kd_pseudo_label": (("kd", "pseudo_label"), "Hinton KD + teacher pseudo-labels + CE"),
    # Detection (CenterNet heads): `ce` is then the task's supervised loss on the labeled boxes.
    "pseudo_boxes": (("pseudo_boxes",), "teacher pseudo-boxes on unlabeled rows + labels (detection)"),
    "heatmap_kd": (("heatmap_kd",), "heatmap KD + the teacher's boxes at its peaks + labels (detection)"),
    "det_kd": (("pseudo_boxes", "heatmap_kd"), "pseudo-boxes + heatmap KD + labels (detection)"),
    "det_pkd": (("pseudo_boxes", "heatmap_kd", "pkd"),
                "pseudo-boxes + heatmap KD + PKD feature imitation near objects + labels (detection)"),
}
# The term a preset's β (distill.beta) adds, by the task the preset's terms serve.
FEATURE_TERMS = {"classification": "feature", "detection": "pkd"}


def preset_names() -> list[str]:
    return list(PRESETS)


@dataclass
class TermSpec:
    name: str
    weight: float
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, **self.params}


def term_specs(distill) -> list[TermSpec]:
    """The objective a DistillConfig describes, validated (one-line ConfigErrors)."""
    specs = _explicit_specs(distill.terms) if distill.terms else _preset_specs(distill)
    for spec in specs:
        params = term_parameters(spec.name)  # also rejects an unknown term name
        unknown = sorted(set(spec.params) - set(params))
        if unknown:
            raise ConfigError(f"term {spec.name} has no parameter {unknown[0]!r} "
                              f"(its parameters: {', '.join(params) or 'none'})")
        if "temperature" in params and "temperature" not in spec.params:
            spec.params["temperature"] = distill.temperature
        if not (math.isfinite(spec.weight) and spec.weight >= 0):
            raise ConfigError(f"term {spec.name}: weight must be a finite number >= 0, got {spec.weight}")
    if not any(s.weight > 0 for s in specs):
        raise ConfigError("every distillation term has weight 0: nothing to train on")
    for spec in specs:  # builds each term once, so a bad hyperparameter fails now, and records
        spec.params = term_class(spec.name)(**spec.params).hyperparameters()  # its defaults for the report
    # A zero-weight term is dropped: it would still count in `needs` and build learned parts
    # that never get a gradient (which DDP refuses).
    return [s for s in specs if s.weight > 0]


def settings_read(distill) -> frozenset[str]:
    """Which of distill.temperature, alpha and beta the objective reads ("temperature", "alpha",
    "beta"): a preset reads alpha when it has distillation terms (labels_only's ce weighs 1) and
    always beta; explicit terms read neither, each sets its own weight. The temperature goes to
    each term that takes one and does not set its own (term_specs). Call after term_specs passed."""
    read = set() if distill.terms else {"beta"} | ({"alpha"} if PRESETS[distill.method][0] else set())
    specs = _explicit_specs(distill.terms) if distill.terms else _preset_specs(distill)
    if any("temperature" in term_parameters(s.name) and "temperature" not in s.params for s in specs):
        read.add("temperature")
    return frozenset(read)


def teacher_needs(distill) -> frozenset[str]:
    """The teacher outputs the configured objective reads ("logits", "features"): what the
    teacher-output cache stores and what preflight checks the teacher returns."""
    return frozenset().union(*(term_class(s.name).needs for s in term_specs(distill)))


def _preset_specs(distill) -> list[TermSpec]:
    if distill.method not in PRESETS:
        raise ConfigError(f"unknown distillation method {distill.method!r} (choices: {', '.join(PRESETS)})")
    names, _ = PRESETS[distill.method]
    if not 0.0 <= distill.alpha <= 1.0:  # also false for NaN
        raise ConfigError(f"distill.alpha must be in [0, 1], got {distill.alpha}")
    if not (distill.beta >= 0 and math.isfinite(distill.beta)):
        raise ConfigError(f"distill.beta must be a finite number >= 0, got {distill.beta}")
    specs = [TermSpec("ce", distill.alpha if names else 1.0)]
    specs += [TermSpec(n, (1.0 - distill.alpha) / len(names)) for n in names]
    if distill.beta > 0:
        tasks = preset_tasks(distill.method)
        specs.append(TermSpec(FEATURE_TERMS.get(tasks[0], "feature") if tasks else "feature", distill.beta))
    return specs


def preset_tasks(method: str) -> tuple[str, ...] | None:
    """The tasks every term of preset `method` applies to; None: any task (labels only)."""
    tasks = None
    for name in PRESETS[method][0]:
        own = term_class(name).tasks
        if own is not None:
            tasks = own if tasks is None else tuple(t for t in tasks if t in own)
    return tasks


def presets_for_task(task: str) -> list[str]:
    """The presets whose terms all apply to `task`, in PRESETS order."""
    return [m for m in PRESETS if preset_tasks(m) is None or task in preset_tasks(m)]


def check_objective_for_task(distill, task: str) -> list[TermSpec]:
    """term_specs(distill), refused with one line when a term (or the preset) does not apply to
    `task`, e.g. "method 'hinton' does not apply to task 'detection' (methods for detection: ...)".

    A task that no registered term names in its ``tasks`` (a user's own task, e.g. the toy task of
    tests/test_task_seam.py) is not checked: the tags cannot tell which terms fit its outputs."""
    specs = term_specs(distill)
    if not any(task in (term_class(n).tasks or ()) for n in term_names()):
        return specs
    if not distill.terms and distill.method in PRESETS and distill.method not in presets_for_task(task):
        raise ConfigError(f"method {distill.method!r} does not apply to task {task!r} "
                          f"(methods for {task}: {', '.join(presets_for_task(task))})")
    check_terms_for_task(specs, task)
    return specs


def _explicit_specs(items) -> list[TermSpec]:
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"distill.terms[{i}] must be a mapping with a name, e.g. {{name: kd, weight: 0.5}}")
        params = dict(item)
        name = str(params.pop("name"))
        try:
            weight = float(params.pop("weight", 1.0))
        except (TypeError, ValueError):
            raise ConfigError(f"distill.terms[{i}] ({name}): weight must be a number") from None
        specs.append(TermSpec(name, weight, params))
    return specs


class Objective(nn.Module):
    """Σ weight_i · term_i. Holds the terms (and their learned parts) as submodules."""

    def __init__(self, specs: list[TermSpec], kd_impl: str = "auto"):
        super().__init__()
        self.specs = specs
        self.terms = nn.ModuleDict()
        for i, spec in enumerate(specs):
            term = term_class(spec.name)(**spec.params)
            if hasattr(term, "impl"):
                term.impl = kd_impl
            self.terms[f"{i}_{spec.name}"] = term  # slot name: position keeps two terms of one kind apart
        self.weights = {slot: s.weight for slot, s in zip(self.terms, specs)}

    @property
    def needs(self) -> frozenset[str]:  # the same union as teacher_needs(config)
        return frozenset().union(*(type(t).needs for t in self.terms.values()))

    def setup(self, info: SetupInfo) -> None:
        for term in self.terms.values():
            term.setup(info)

    def forward(self, batch: TermInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total, {term name: unweighted value}) for one batch."""
        from distill_export.distributed import is_distributed, row_share

        total = batch.student_logits.new_zeros((), dtype=torch.float32)
        parts = {}
        # Under DDP, a row-mean term on this rank's shard is rescaled to its share of the global
        # batch's mean (1.0 when the shards are equal); one process skips it (bit-identical).
        share = row_share(batch.student_logits.shape[0]) if is_distributed() else None
        for slot, term in self.terms.items():
            weight = self.weights[slot]
            if weight == 0:
                continue
            shared = share is not None and not term.global_denominator
            folds = getattr(term, "folds_weight", None)
            if folds is not None and folds(batch):
                # The fused KD kernel takes weight·share as one fp32 scale and rounds the weighted
                # gradient once (multiplying after the fact would round a bf16/fp16 gradient twice).
                scale = weight * share if shared else weight
                weighted = term.loss(batch, slot, scale=scale)
                value = weighted.detach() / scale if scale else weighted.detach()  # unweighted, for the log
                total = total + weighted
            else:
                value = term.loss(batch, slot)
                scaled = value * share if shared else value
                total = total + weight * scaled
            name = slot.split("_", 1)[1]
            parts[name if name not in parts else slot] = value.detach()  # two terms of one kind stay apart
        return total, parts


class DistillModule(nn.Module):
    """The student and every learned part of the objective: the one module DDP wraps.

    forward(x) -> (logits (B, C), {slot: what each term computes from the student's features}).
    """

    def __init__(self, student: nn.Module, objective: Objective):
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats, logits = self.student.forward_features(x)
        side = {}
        for slot, term in self.objective.terms.items():
            out = term.student_side(feats, logits)
            if out is not None:
                side[slot] = out
        return logits, side
