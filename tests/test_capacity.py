"""The fit check (capacity.py): the report flags a student that cannot fit what the teacher knows
from the student's modality, and not one that can (issue 23)."""

from __future__ import annotations

import json

import torch
from torch import nn

from distill_export.capacity import FIT_GAP_LIMIT, MAX_ROWS, training_fit
from distill_export.data.dataset import Dataset, Split
from distill_export.record import RunRecord
from distill_export.tasks import get_task
from distill_export.tasks.report_view import fit_sentence

C = 4


class ReadsPixel(nn.Module):
    """Predicts the class written in pixel (0, 0) of its image: a model that fits perfectly."""

    def forward_features(self, x):
        cls = x[:, 0, 0, 0].long()
        return x.flatten(1), nn.functional.one_hot(cls, C).float() * 10


class Constant(nn.Module):
    """Always class 0: a model with no capacity."""

    def forward_features(self, x):
        return x.flatten(1), torch.zeros(len(x), C).index_fill_(1, torch.tensor([0]), 1.0)


class Teacher(nn.Module):
    """Reads the class from the image, or (image zeroed by `drop`) from the audio."""

    modality_names = ["image", "audio"]

    def forward_features(self, inputs, drop=()):
        image = inputs["image"] if "image" not in drop else torch.zeros_like(inputs["image"])
        audio = inputs["audio"] if "audio" not in drop else torch.zeros_like(inputs["audio"])
        # image pixel 0 holds the class; the audio holds it too, but the student never sees audio
        cls = torch.where(image[:, 0, 0, 0] > 0, image[:, 0, 0, 0], audio[:, 0]).long()
        return audio, nn.functional.one_hot(cls, C).float() * 10


def _data(n: int = 300, hide_image_every: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(1, C, (n,), generator=g)  # classes 1..3: class 0 is the Constant model's guess
    image = torch.zeros(n, 1, 4, 4)
    image[:, 0, 0, 0] = y.float()
    if hide_image_every:  # these rows' images carry no class: only the audio knows it
        image[::hide_image_every, 0, 0, 0] = 0
    audio = y.float()[:, None].repeat(1, 3)
    labels = y.clone()
    labels[::10] = -100  # a tenth of the rows are unlabeled: never scored
    split = Split({"image": image, "audio": audio}, labels)
    return Dataset("synthetic", split, split, split, [str(i) for i in range(C)], {"image": None, "audio": None})


def test_a_student_without_capacity_is_flagged():
    fit = training_fit(Teacher(), {"student": Constant(), "baseline": ReadsPixel()}, _data(), "image", "cpu",
                       get_task("classification"))
    assert fit["rows"] == 270  # the labelled rows only
    assert fit["teacher"] == fit["teacher_student_view"] == 1.0
    assert fit["student"] == 0.0 and fit["baseline"] == 1.0
    assert fit["gap"] == 1.0 and fit["flagged"] is True and fit["limit"] == FIT_GAP_LIMIT


def test_the_reference_is_what_the_teacher_knows_from_the_students_modality():
    # A third of the images carry no class: the teacher still knows it from the audio (100%), but
    # through the image alone it knows 2/3 of them, and so does a student that reads the image.
    fit = training_fit(Teacher(), {"student": ReadsPixel()}, _data(hide_image_every=3), "image", "cpu",
                       get_task("classification"))
    assert fit["teacher"] == 1.0
    assert abs(fit["teacher_student_view"] - fit["student"]) < 1e-9 and fit["student"] < 0.8
    assert fit["flagged"] is False


def test_rows_are_capped_and_the_same_for_every_model():
    fit = training_fit(Teacher(), {"student": ReadsPixel()}, _data(n=MAX_ROWS + 500), "image", "cpu",
                       get_task("classification"))
    assert fit["rows"] == MAX_ROWS


def test_the_report_states_the_fit(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    fit = report["distill"]["fit"]
    assert 0.0 <= fit["student"] <= 1.0 and fit["rows"] > 0
    assert fit["flagged"] == (fit["gap"] > fit["limit"])
    sentence = fit_sentence(RunRecord.model_validate(report))
    assert f"{100 * fit['student']:.1f}%" in sentence
    assert ("cannot fit" in sentence) == fit["flagged"]
    assert sentence in (tiny_run / "report.md").read_text()
