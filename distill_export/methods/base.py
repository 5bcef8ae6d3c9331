"""The pieces every distillation term shares: its inputs, its base class and the registry.

A term is one loss (CE on labels, Hinton KD, DKD, ...). An objective is a weighted sum of
terms (objective.py). Adding a method is one file in this package that defines a ``Term``
subclass decorated with ``@register_term``, plus its test: the trainer, the CLI, the
pipeline and the report only ever see the registry (torchdistill's loss registry is the model).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from distill_export.errors import ConfigError
from distill_export.registry import import_members

IGNORE_INDEX = -100  # an unlabeled row's label (data.IGNORE_INDEX)
TEACHER_OUTPUTS = ("logits", "features")  # what a term may need from the teacher

_TERMS: dict[str, type["Term"]] = {}


@dataclass
class TermInputs:
    """One batch as the terms see it. B rows, C classes.

    Shapes are the task's: classification (B, C) logits, (B,) labels and (B, D) features;
    detection (B, C+4, h, w) raw heads (nets/centernet.py), (B, M, 5) boxes and (B, D, h, w)
    feature maps (the teacher's raw heads are what the cache calls "logits")."""

    student_logits: torch.Tensor  # (B, C)
    labels: torch.Tensor  # (B,) int64; IGNORE_INDEX marks an unlabeled row
    teacher_logits: torch.Tensor | None = None  # (B, C), no gradient
    teacher_features: torch.Tensor | None = None  # (B, D_t), standardised, no gradient
    # What each term computed inside the trainable module's forward (Term.student_side),
    # keyed by the term's slot name, e.g. the feature term's projection (B, D_t).
    student_side: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def labeled(self) -> torch.Tensor:  # (B,) bool: the rows whose target is not IGNORE_INDEX-filled
        if self.labels.dim() == 1:
            return self.labels != IGNORE_INDEX
        return (self.labels != IGNORE_INDEX).reshape(len(self.labels), -1).any(1)


@dataclass
class SetupInfo:
    """What a term may need to build its learned parts, known once the data and teacher are."""

    num_classes: int
    student_feature_dim: int  # 0: the student exposes logits only
    teacher_feature_dim: int  # 0: the teacher returns logits only
    task: str = "classification"  # Task.name: what the outputs and labels mean
    # The task's loss on labeled rows (Task.supervised_loss: a mean over the rows it is given),
    # which the `ce` (labels) term uses for every task but classification; there, and when it
    # is None, `ce` computes cross-entropy row by row (exact under DDP, the numbers of before).
    supervised_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


class Term(nn.Module):
    """One loss term. Subclasses set ``name``, ``needs``, ``summary`` and implement ``loss``.

    ``needs`` names the teacher outputs the term reads ("logits", "features"): the
    teacher-output cache stores exactly the union over the objective's terms.
    ``search`` gives tune's search space for the term's hyperparameters:
    name -> (low, high, "log" | "linear").
    Constructor keyword arguments are the term's hyperparameters (YAML keys).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    summary: ClassVar[str] = ""
    search: ClassVar[dict[str, tuple[float, float, str]]] = {}
    # False: the loss is a mean over the batch's rows, which the objective turns into its share
    # of the global mean under DDP (distributed.row_share). True: the term makes itself exact
    # under DDP: it divides by a global denominator (distributed.global_count), e.g. a mean over
    # the labeled rows only, or computes on the gathered batch (distributed.gather_rows).
    global_denominator: ClassVar[bool] = False
    # The tasks (Task.name) whose outputs and targets the term understands; None: any task
    # (a term that reads only what every task has, or a user's term that does not say).
    tasks: ClassVar[tuple[str, ...] | None] = None

    def setup(self, info: SetupInfo) -> None:
        """Build learned parts (projectors). Called once, before training."""

    def student_side(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """Run inside the trainable module's forward (so DDP sees every learned part)."""
        return None

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        """The term's unweighted scalar loss; ``slot`` keys batch.student_side."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _init_parameters(type(self))}


def register_term(cls: type[Term]) -> type[Term]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _TERMS:
        raise TypeError(f"term {cls.name!r} is registered twice")
    if cls.tasks is not None and (isinstance(cls.tasks, str) or not all(isinstance(t, str) for t in cls.tasks)):
        raise TypeError(f"term {cls.name!r}: tasks must be a tuple of task names or None, got {cls.tasks!r}")
    unknown = set(cls.needs) - set(TEACHER_OUTPUTS)
    if unknown:
        raise TypeError(f"term {cls.name!r} needs unknown teacher outputs {sorted(unknown)}")
    _TERMS[cls.name] = cls
    return cls


def term_names() -> list[str]:
    _load_builtin_terms()
    return sorted(_TERMS)


def term_class(name: str) -> type[Term]:
    _load_builtin_terms()
    if name not in _TERMS:
        raise ConfigError(f"unknown distillation term {name!r} (choices: {', '.join(sorted(_TERMS))})")
    return _TERMS[name]


def term_parameters(name: str) -> list[str]:
    return _init_parameters(term_class(name))


def applies_to(name: str, task: str) -> bool:
    """Whether term `name` understands the outputs and targets of `task`."""
    tasks = term_class(name).tasks
    return tasks is None or task in tasks


def terms_for_task(task: str) -> list[str]:
    """The registered terms that apply to `task`, sorted."""
    return [n for n in term_names() if applies_to(n, task)]


def check_terms_for_task(names: Iterable[Any], task: str) -> None:
    """ConfigError naming the first term (a name or anything with ``.name``, e.g. a TermSpec)
    that does not apply to `task`, and the terms that do."""
    for item in names:
        name = getattr(item, "name", item)
        if not applies_to(name, task):
            raise ConfigError(f"term {name!r} does not apply to task {task!r} "
                              f"(terms for {task}: {', '.join(terms_for_task(task))})")


def _init_parameters(cls: type) -> list[str]:
    """The named keyword parameters of a term's constructor (its YAML keys)."""
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [k for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self" and p.kind not in skip]


def _load_builtin_terms() -> None:
    """Every term module of this package, imported once, registers its terms."""
    import_members(__file__, __package__)


# The smallest temperature a term takes: below it logits / T overflow float32 and the loss is NaN.
# config_checks.MIN_TEMPERATURE is the same number (it cannot import this module: torch).
MIN_TEMPERATURE = 0.01


def check_temperature(value: float, term: str) -> float:
    """A term's temperature: finite and at least MIN_TEMPERATURE, named with its term."""
    value = float(value)
    if not (MIN_TEMPERATURE <= value < float("inf")):
        raise ConfigError(f"term {term}: temperature must be a finite number >= {MIN_TEMPERATURE}, got {value}")
    return value


def check_positive(name: str, value: float, term: str) -> float:
    value = float(value)
    if not (value > 0 and value < float("inf")):
        raise ConfigError(f"term {term}: {name} must be a finite number > 0, got {value}")
    return value


def check_open_unit(name: str, value: float, term: str) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"term {term}: {name} must be in (0, 1), got {value}")
    return value


def check_non_negative(name: str, value: float, term: str) -> float:
    value = float(value)
    if not (value >= 0 and value < float("inf")):
        raise ConfigError(f"term {term}: {name} must be a finite number >= 0, got {value}")
    return value
