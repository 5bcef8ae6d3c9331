"""report.json as typed sections: what each stage records, and what the renderers read.

The file on disk keeps the shape users' CI already reads (top-level sections, the same keys);
`schema_version` says which version of this module wrote it (migrate.py reads older ones).
Every model keeps keys it does not know (extra="allow"), so a newer writer's additions and a
dataset's own details (`dataset.pca_components`, ...) survive a rewrite; the keys declared here
are the ones the renderers and tools rely on, and are checked on every write.

Who writes which section (always through `RunDir.update_report`, the one writer):
    dataset, metrics.teacher, teacher          stage train_teacher
    metrics, kd_gain*, comparisons, distill    stage distill
    exports, teacher_exports                   stage export (parity added by stage validate)
    latency, speedups, profile                 stage profile / `distill-export profile RUN`
    recommended                                recommend.update_run (replaced as a whole)
    timings, resumed                           pipeline
Stage state (which stages finished) is not here: rundir keeps it in state.json. The sections
of what ships (exports, parity, latency, profile, recommended) are in deploy.py.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from distill_export.record.deploy import Export, LatencyRow, Profile, Recommendation, Speedup, check_speedups
from distill_export.record.metrics import (Count, Interval, NonNegative, Positive, Probability, RecordSection,
                                           TaskComparison, TaskMetrics)

SCHEMA_VERSION = 1


class Section(RecordSection):
    """Every section keeps unknown keys and refuses booleans in its numbers (metrics.RecordSection)."""


# ----- training histories -------------------------------------------------------------------------
class Epoch(Section):
    """One epoch of a training: mean training loss (and its parts per term) and the validation score."""

    epoch: int
    train_loss: float
    val_accuracy: float | None = None
    train_loss_parts: dict[str, float] | None = None


class Term(Section):
    """One term of the distillation objective: name, weight and its parameters (temperature, threshold, ...)."""

    name: str
    weight: float
    temperature: float | None = None
    threshold: float | None = None


class ExpertFit(Section):
    """One modality expert's training (late fusion; a re-fit in a later round)."""

    best_epoch: int | None = None
    best_val_accuracy: float | None = None


class RoundTeacher(Section):
    """What a later distillation round taught from (rounds.next_round_targets)."""

    experts: dict[str, ExpertFit] = Field(default_factory=dict)  # modality -> its re-fit
    teacher_val_accuracy: float | None = None
    student_temperature: float | None = None


class Round(Section):
    round: int
    best_val_accuracy: float
    teacher: RoundTeacher | None = None  # absent for round 1 (the stage's teacher)


class Training(Section):
    """One training's record: its best epoch and its per-epoch history. A teacher given by path
    has only `source`; a reused late-fusion expert has `expert_of`; a control that did not run
    has only `skipped`."""

    source: str | None = None
    expert_of: str | None = None
    skipped: str | None = None
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    history: list[Epoch] = Field(default_factory=list)
    terms: list[Term] | None = None
    distilled: bool | None = None
    rounds: list[Round] | None = None  # distill.rounds > 1: the student's val score by round
    experts: dict[str, ExpertFit] | None = None  # late fusion: modality -> best epoch and val score
    expert_temperatures: dict[str, float] | None = None


# ----- sections -----------------------------------------------------------------------------------
class Dataset(Section):
    name: str | None = None
    class_names: list[str] | None = None
    sizes: dict[str, Count] = Field(default_factory=dict)  # split -> rows
    labeled_train_rows: Count | None = None
    label_fraction: float | None = None  # asked (data.label_fraction)
    label_fraction_kept: float | None = None  # what trained: whole rows, at least one per class
    test_voices: list[str] | None = None  # the built-in demo only: voices held out of training
    train_rows_subsampled_from: Count | None = None  # data.max_train_rows kept this many of them
    pca_components: Count | None = None  # the AV-MNIST/demo image degradation, and the audio noise
    pca_variance: float | None = None
    audio_snr_db: float | None = None


class Teacher(Section):
    training: Training | None = None
    modality_probe: dict[str, float] = Field(default_factory=dict)  # without_<m> / only_<m> -> score
    fusion: str | None = None  # concat | late | external
    # the headline metric on the training rows whose labels label_fraction hid: pseudo-label quality
    unlabeled_pool: dict[str, float] | None = None
    # sha256 of the teacher file these metrics describe (None: a factory, or a run made before it)
    file_sha256: str | None = None


class SelfTrainingControl(Section):
    """An image-only teacher of the same size, distilled the same way (or why it did not run)."""

    skipped: str | None = None
    teacher_accuracy: float | None = None
    teacher_unlabeled_pool: dict[str, float] | None = None  # as Teacher.unlabeled_pool, for its teacher
    teacher_training: Training | None = None
    student_training: Training | None = None


class TeacherCache(Section):
    status: str | None = None  # hit | miss | not used | ...
    reason: str | None = None
    path: str | None = None


class Fit(Section):
    """Scores on labelled training rows (capacity.training_fit): can the student fit the teacher?"""

    rows: Count | None = None
    teacher: float | None = None
    teacher_student_view: float | None = None  # the teacher with the other modalities zeroed
    student: float | None = None
    baseline: float | None = None
    self_training: float | None = None
    gap: float | None = None  # teacher_student_view (or teacher) - student
    limit: float | None = None
    flagged: bool | None = None


class Distill(Section):
    student: str | None = None
    files_sha256: dict[str, str] | None = None  # student.pt, baseline.pt, ... as distill wrote them (run_outputs)
    method: str | None = None
    distilled: bool | None = None
    terms: list[Term] | None = None
    teacher_needs: list[str] | None = None
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    label_fraction: float | None = 1.0  # asked (data.label_fraction)
    rounds: Positive | None = None
    labeled_train_rows: Count | None = None
    label_fraction_kept: float | None = None  # what trained: whole rows, at least one per class
    train_rows: Count | None = None
    kd_loss_impl: str | None = None
    processes: Positive | None = None
    streaming: bool | None = None
    student_training: Training | None = None
    baseline_training: Training | None = None
    self_training_control: SelfTrainingControl | None = None
    teacher_accuracy_retention: float | None = None
    augment: str | None = None
    mix: str | None = None
    mix_alpha: float | None = None
    teacher_cache: TeacherCache | None = None
    fit: Fit | None = None


class Resumed(Section):
    at: str
    from_stage: str


class TaskInfo(Section):
    """Which task (tasks/) the run is, so renderers know its headline metric without the code."""

    name: str = "classification"
    headline: str = "accuracy"  # the key of metrics.<model> a run is summed up by (kd_gain's unit)
    score_name: str = "accuracy"  # what the validation score is (the training curves)


class TuneTeacher(Section):
    """One teacher a `tune --search ...,fusion` trial drew from (tune.py writes own and val_score)."""

    own: bool = False  # the run's own teacher
    val_score: Probability  # its validation score (accuracy or mAP): the reason shown, not the choice


class TuneTrial(Section):
    """The search's best trial (tune.py): a preset, its terms and its validation score."""

    method: str
    terms: list[Term]
    val_accuracy: Probability  # accuracy or mAP: a fraction


class TuneDecision(Section):
    """What tune chose (tune_decision.decide): labels only (distill false: method labels_only, CE
    alone), or a searched preset with its terms; `line` says why. A list for the method, a number
    for the line, or a labels-only decision naming a preset were rendered as the choice (54th B4)."""

    distill: bool
    method: str
    terms: list[Term]
    line: str
    augment: dict[str, Any] | None = None  # distill.mix and distill.mix_alpha
    teacher_fusion: str | None = None
    rounds: Positive | None = None

    @model_validator(mode="after")
    def _labels_only_is_ce_alone(self):
        if not self.distill and (self.method != "labels_only" or [t.name for t in self.terms] != ["ce"]):
            raise ValueError(f"a labels-only decision (distill false) with method {self.method!r} and terms "
                             f"{', '.join(t.name for t in self.terms)}")
        return self


class Tune(Section):
    """`run --tune`: the search and confirmation on validation that chose the objective (tune.py)."""

    trials: Count | None = None
    completed: Count | None = None
    pruned: Count | None = None
    seconds: NonNegative | None = None
    baseline_val_accuracy: Probability | None = None
    best: TuneTrial | None = None  # the search's best trial: method, terms, val_accuracy
    decision: TuneDecision | None = None  # distill, method, terms, line (the reason in words)
    confirmation: dict[str, Any] | None = None
    # search space "fusion": each teacher the trials drew from -> own (the run's), val_score
    teachers: dict[str, TuneTeacher] | None = None  # a string score was a report traceback (35th audit B2)

    @model_validator(mode="after")
    def _counts_within_trials(self):
        for name in ("completed", "pruned"):
            value = getattr(self, name)
            if None not in (value, self.trials) and value > self.trials:
                raise ValueError(f"{name} {value} is more than the {self.trials} trials")
        return self


class RunRecord(Section):
    """The whole of report.json. Its own numbers (kd_gain, its interval and p, the timings) are
    finite, a timing >= 0 and p in [0, 1]: anything else is a corrupt record, refused on load
    (nested sections keep theirs: a parity difference may be inf when an export overflows)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    schema_version: int = SCHEMA_VERSION
    run_id: str | None = None  # = state.json's: a report.json copied from another run is refused (run_identity)
    task: TaskInfo = Field(default_factory=TaskInfo)  # files without one are classification runs
    timings: dict[str, NonNegative] = Field(default_factory=dict)  # stage -> seconds
    dataset: Dataset | None = None
    metrics: dict[str, TaskMetrics] = Field(default_factory=dict)  # teacher, baseline, self_training, student
    teacher: Teacher | None = None
    kd_gain: float | None = None  # = comparisons.student_vs_baseline.gain, kept top-level for CI
    kd_gain_ci95: Interval | None = None
    kd_gain_p_value: Probability | None = None
    kd_verdict: str | None = None
    comparisons: dict[str, TaskComparison] = Field(default_factory=dict)
    distill: Distill | None = None
    tune: Tune | None = None
    exports: dict[str, Export] = Field(default_factory=dict)  # format -> the student's artifact
    teacher_exports: dict[str, Export] = Field(default_factory=dict)  # "onnx" -> the teacher's
    latency: list[LatencyRow] = Field(default_factory=list)
    speedups: list[Speedup] = Field(default_factory=list)
    profile: Profile | None = None
    recommended: dict[str, Recommendation] = Field(default_factory=dict)  # target -> choice
    resumed: list[Resumed] = Field(default_factory=list)
    # name -> a PNG under plots/ that a stage drew (Task.draw_examples: test frames with boxes)
    figures: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sections_agree(self):
        """Numbers one section derives from another agree with it (fifty-fourth audit B1, B7):
        a confusion matrix or per-class table has the dataset's classes, a comparison's gain is the
        difference of its two models' accuracies, and kd_gain is student_vs_baseline's gain."""
        names = self.dataset.class_names if self.dataset is not None else None
        for model, m in self.metrics.items():
            if names is not None and m.confusion_matrix is not None and len(m.confusion_matrix) != len(names):
                raise ValueError(f"metrics.{model}.confusion_matrix has {len(m.confusion_matrix)} rows for the "
                                 f"dataset's {len(names)} classes")
            if names is not None and m.per_class is not None and set(m.per_class) != set(names):
                extra = sorted(set(m.per_class) ^ set(names), key=str)[:3]
                raise ValueError(f"metrics.{model}.per_class does not list the dataset's classes (differs in {extra})")
        for pair, c in self.comparisons.items():
            a, _, b = pair.partition("_vs_")
            ma, mb = self.metrics.get(a), self.metrics.get(b)
            if ma is not None and mb is not None and None not in (ma.accuracy, mb.accuracy) \
                    and abs(c.gain - (ma.accuracy - mb.accuracy)) > 1e-6:
                raise ValueError(f"comparisons.{pair}.gain {c.gain} is not metrics.{a}.accuracy - metrics.{b}.accuracy "
                                 f"({ma.accuracy - mb.accuracy:.6f})")
            rows = ma.n if ma is not None else None
            if c.discordant is not None and rows and (sum(c.discordant) > rows or abs(
                    c.gain - (c.discordant[0] - c.discordant[1]) / rows) > 1e-6):
                raise ValueError(f"comparisons.{pair}.discordant {list(c.discordant)} is not what {rows} test rows and "
                                 f"gain {c.gain} allow")
        check_speedups(self.latency, self.speedups)
        paired = self.comparisons.get("student_vs_baseline")  # kd_gain* repeat it at the top level, for CI
        mirrors = (("kd_gain", "gain"), ("kd_gain_ci95", "ci95"), ("kd_gain_p_value", "p_value"), ("kd_verdict", "verdict"))
        for top, key in mirrors if paired is not None else ():
            mine, theirs = getattr(self, top), getattr(paired, key)
            if None not in (mine, theirs) and mine != theirs and not (
                    isinstance(mine, float) and abs(mine - theirs) <= 1e-9):
                raise ValueError(f"{top} {mine} is not comparisons.student_vs_baseline.{key} {theirs}")
        return self


SECTIONS = tuple(name for name in RunRecord.model_fields if name not in ("schema_version", "run_id"))
