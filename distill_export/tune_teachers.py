"""The teachers a `tune --search ...,fusion` trial can draw from: the run's own, and one of each
other fusion the task takes (classification: concat and late), trained once with the run's
teacher settings (the same labeled rows, epochs, width and seed) into RUN/tune_teacher_<fusion>.pt.

Why a student trial decides and not the teacher's own accuracy: the fusion that scores best with
every modality is not always the one that teaches the student's modality best. A product of
per-modality experts (late) passes the other modality's knowledge where the image is weak; a
concat teacher can lean on the image alone (issue 23). So each fusion is judged by the
validation accuracy of students distilled from it, and its own validation score is recorded
beside, as the reason a user can read.
"""

from __future__ import annotations

import copy
from pathlib import Path

from distill_export.errors import ConfigError


def tune_teacher_file(run, fusion: str) -> Path:
    return run.file(f"tune_teacher_{fusion}.pt")


class TeacherPool:
    """Teachers by fusion, each with its outputs on the training rows (TeacherTargets), built on first use."""

    def __init__(self, config, run, data, device, quiet: bool = True):
        from distill_export.distill_runs import teacher_path
        from distill_export.nets.model_io import load_teacher

        self.config, self.run, self.data, self.device, self.quiet = config, run, data, device, quiet
        teacher = load_teacher(teacher_path(config, run), data, config.teacher.weights,
                               max_call_s=config.validate.max_call_s).to(device)
        self.own = getattr(teacher, "fusion_name", None) or config.teacher.fusion
        self.models = {self.own: teacher}
        self.val_scores: dict[str, float] = {}
        self._targets: dict[tuple[str, bool], object] = {}
        modality = config.data.student_modality
        self.drop = tuple(m for m in data.modalities if m != modality) if config.distill.teacher_view == "student" else ()

    def fusions(self) -> list[str]:
        """The run's own fusion first, then the task's others that can be trained here."""
        from distill_export.data.streaming import is_streamed
        from distill_export.tasks import get_task

        if self.config.teacher.path:
            raise ConfigError("tune --search fusion trains a teacher of each fusion, but this run's teacher is "
                              f"a loaded file ({self.config.teacher.path}); drop fusion from the search")
        streamed = any(is_streamed(v) for v in self.data.train.inputs.values())
        others = [f for f in get_task(self.config.task).teacher_fusions if f != self.own
                  and not (f == "late" and streamed)]  # late experts train on in-memory rows only
        return [self.own, *others]

    def teacher(self, fusion: str):
        if fusion not in self.models:
            from distill_export.nets.model_io import load_teacher
            from distill_export.train_teacher import train_teacher

            cfg = copy.deepcopy(self.config)
            cfg.teacher.fusion = fusion
            path = tune_teacher_file(self.run, fusion)
            train_teacher(cfg, self.data, self.device, path, quiet=self.quiet, label=f"teacher ({fusion}) ")
            self.models[fusion] = load_teacher(path, self.data).to(self.device)
        return self.models[fusion]

    def val_score(self, fusion: str) -> float:
        """The teacher's own validation score (all its modalities): recorded as the reason, not the choice."""
        if fusion not in self.val_scores:
            from distill_export.tasks import get_task
            from distill_export.train import predict

            teacher = self.teacher(fusion)
            val = {m: v.to(self.device) for m, v in self.data.val.inputs.items()}
            _, outputs = predict(teacher.forward_features, val, len(self.data.val))
            self.val_scores[fusion] = float(get_task(self.config.task).score(outputs.numpy(), self.data.val.labels.numpy()))
        return self.val_scores[fusion]

    def targets(self, cfg, fusion: str | None = None):
        """The fusion's outputs for a student trained with `cfg`: cached once per teacher, or (the
        student's batch augmented or mixed) the teacher run on each batch."""
        from distill_export.teacher_cache import CACHE_DIR, teacher_targets

        fusion = fusion or self.own
        online = cfg.distill.augment != "none" or cfg.distill.mix != "none"
        if (fusion, online) not in self._targets:
            teacher = self.teacher(fusion)
            forward = lambda x: teacher.forward_features(x, drop=self.drop)  # noqa: E731
            own = fusion == self.own
            self._targets[(fusion, online)] = teacher_targets(
                cfg, self.run, self.data, forward, self.device, teacher.modality_names, self.drop,
                needs=("features", "logits"), teacher_file=None if own else tune_teacher_file(self.run, fusion),
                cache_dir=CACHE_DIR if own else f"{CACHE_DIR}_{fusion}")
        return self._targets[(fusion, online)]
