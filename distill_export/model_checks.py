"""Before any training: fail on a student or teacher that cannot work with this data.

(Moved out of nets/external.py: it loads models and reads the objective, so it sits above
nets/ and methods/, not inside them.)
"""

from __future__ import annotations

import torch

from distill_export.errors import ConfigError
from distill_export.methods import teacher_needs
from distill_export.nets.external import is_factory
from distill_export.nets.model_io import load_teacher, new_student
from distill_export.nets.students import create_student


def preflight(config, data) -> None:
    """Fail on a student or teacher that cannot work with this data before anything trains."""
    modality = config.data.student_modality
    spec = data.modalities[modality]
    name = config.student.name
    if spec.kind in ("text", "vector") and not is_factory(name):
        raise ConfigError(f"student modality {modality!r} is {spec.kind}; the built-in students take images or "
                          f"spectrograms: pass --student package.module:factory for a {spec.kind} student")
    if config.distill.augment != "none" and spec.kind not in ("image", "audio"):
        raise ConfigError(f"distill.augment={config.distill.augment} shifts images/spectrograms, not {spec.kind}")
    # A term that needs features (the feature term, --beta > 0 or in distill.terms).
    wants_features = "features" in teacher_needs(config.distill)
    if is_factory(name):
        student = create_student(name, data.num_classes, in_channels=spec.shape[0]).eval()  # a factory: no input_size
        x = data.train.inputs[modality][:2]
        try:
            with torch.no_grad():
                feats, logits = student.forward_features(x)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"student {name} fails on a batch of {modality} {tuple(x.shape)}: {str(exc)[:200]}") from None
        if logits.ndim != 2 or logits.shape[1] != data.num_classes:
            raise ConfigError(f"student {name} returns logits of shape {tuple(logits.shape)}; the data has "
                              f"{data.num_classes} classes")
        if wants_features and feats.shape[1] == 0:
            raise ConfigError(f"student {name} has no forward_features, so the feature term "
                              "cannot work: set --beta 0 (or drop the feature term)")
    if config.student.init_weights:  # a --student-init file that does not fit fails now, not after the teacher
        new_student(config, data)
    if config.teacher.path:
        teacher = load_teacher(config.teacher.path, data, weights=config.teacher.weights)
        if wants_features and getattr(teacher, "has_features", True) is False:
            raise ConfigError(f"teacher {config.teacher.path} returns logits only, so the feature term "
                              "cannot work: set --beta 0 (or drop the feature term), or return "
                              "(features, logits) from the teacher")
