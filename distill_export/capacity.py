"""Can the student fit what the teacher knows? (issue 23: student capacity as a choice, not a trap)

A student too small for its data underfits: its training score stays far below the teacher's,
and no distillation term makes up for missing capacity (Cho & Hariharan, "On the efficacy of
knowledge distillation", ICCV 2019). Both are scored on the same labelled training rows; the
teacher also through the student's modality alone (the others zeroed, as in modality dropout),
since that is all the student can ever see. The report flags a gap above FIT_GAP_LIMIT.
"""

from __future__ import annotations

import numpy as np
import torch

# Flag when the student's training score is more than this below the teacher's through the
# student's modality (a fraction of the task's headline metric: 0.05 = 5 points).
FIT_GAP_LIMIT = 0.05
# Scoring every labelled row costs a forward pass per model; 2,000 rows bound it (about 1 s on CPU
# for the demo) and keep the score's standard error near a point.
MAX_ROWS = 2000


def training_fit(teacher, students: dict, data, modality: str, device, task, seed: int = 0) -> dict | None:
    """{"rows", "teacher", "teacher_student_view", <model>: score, "gap", "limit", "flagged"} on
    up to MAX_ROWS labelled training rows; None when the training split is streamed (scoring it
    would decode it again) or has no labelled row."""
    from distill_export.data.streaming import is_streamed
    from distill_export.train import predict

    inputs = data.train.inputs
    if any(is_streamed(v) for v in inputs.values()):
        return None
    rows = torch.nonzero(torch.as_tensor(data.train.labeled)).flatten()
    if len(rows) == 0:
        return None
    if len(rows) > MAX_ROWS:  # the same rows for every model, fixed by the run's seed
        pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:MAX_ROWS]
        rows = rows[pick.sort().values]
    targets = data.train.labels[rows].numpy()
    names = list(getattr(teacher, "modality_names", data.modalities))
    batch = {m: inputs[m][rows].to(device) for m in {*names, modality}}
    teacher_inputs = {m: batch[m] for m in names}
    others = tuple(m for m in names if m != modality)

    def score(fn, x) -> float:
        with torch.no_grad():
            _, out = predict(fn, x, len(rows))
        return float(task.score(out.numpy(), targets))

    was_training = teacher.training
    teacher.eval()
    result = {"rows": int(len(rows)), "teacher": score(lambda b: teacher.forward_features(b), teacher_inputs),
              # None when the teacher does not read the student's modality (a video teacher of an image student)
              "teacher_student_view": (score(lambda b: teacher.forward_features(b, drop=others), teacher_inputs)
                                       if modality in names else None)}
    teacher.train(was_training)
    for name, model in students.items():
        model.eval()
        result[name] = score(model.forward_features, batch[modality])
    reference = result["teacher"] if result["teacher_student_view"] is None else result["teacher_student_view"]
    result["gap"] = reference - result["student"]
    result["limit"] = FIT_GAP_LIMIT
    result["flagged"] = bool(np.isfinite(result["gap"]) and result["gap"] > FIT_GAP_LIMIT)
    return result
