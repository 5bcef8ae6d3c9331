"""Stage 1: train the multimodal fusion teacher (or load the user's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill_export import distributed as ddp
from distill_export import speed
from distill_export.data import Dataset
from distill_export.errors import ConfigError
from distill_export.tasks import get_task
from distill_export.nets.checkpoint import save_checkpoint
from distill_export.nets.encoders import encoder_input_size
from distill_export.nets.teacher import TEACHER_FUSIONS, FusionTeacher
from distill_export.train import TrainSpec, predict, train_loop


def teacher_kwargs(data: Dataset, width: int, modality_dropout: float, modalities=None, fusion: str = "concat") -> dict:
    specs = {m: s for m, s in data.modalities.items() if modalities is None or m in modalities}
    kwargs = {
        "modalities": {m: encoder_input_size(spec) for m, spec in specs.items()},
        "num_classes": data.num_outputs,
        "width": width,
        "modality_dropout": modality_dropout,
        "kinds": {m: spec.kind for m, spec in specs.items()},
    }
    if fusion == "late":  # experts are trained one modality each: no modality to drop
        del kwargs["modality_dropout"]
    return kwargs


def evaluate_teacher(teacher: FusionTeacher, data: Dataset, device, task,
                     drop: str | tuple[str, ...] | None = None, source: TeacherSource | None = None) -> dict:
    """The task's test metrics; `drop` zeroes one modality's (or several) embedding (a probe of
    the modality gap). `source`: refuse outputs that are not finite (finite_outputs)."""
    inputs = {m: v.to(device) for m, v in data.test.inputs.items()}
    dropped = (drop,) if isinstance(drop, str) else tuple(drop or ())
    forward = lambda x: teacher.forward_features(x, drop=dropped)  # noqa: E731
    _, outputs = predict(forward, inputs, len(data.test))
    finite_outputs(outputs, source, "test rows" + (f" with {'+'.join(dropped)} dropped" if dropped else ""))
    return task.evaluate(outputs.numpy(), data.test.labels.numpy(), data)


@dataclass(frozen=True)
class TeacherSource:
    """The teacher file whose outputs are measured, and whether this run trained it."""

    path: str
    trained: bool = False


def finite_outputs(outputs: torch.Tensor, source: TeacherSource | None, rows: str) -> None:
    """Metrics of NaN or inf logits are not the teacher's (fifth audit W1: a .pt teacher whose
    finite weights overflow on some rows was recorded at 14.5% and refused only later, at the
    cache fill): one line naming the file, before anything is recorded. A trained teacher that
    does this is a failed training."""
    if source is None:
        return
    from distill_export.teacher_cache import check_finite

    then = ("its training failed (it diverged: try a lower teacher.lr or fewer teacher.epochs); nothing was recorded"
            if source.trained else "nothing was recorded")
    check_finite(None, outputs, source.path, rows=rows, then=then)


def unlabeled_pool_score(teacher, data: Dataset, device, task, source: TeacherSource | None = None) -> dict | None:
    """The teacher's headline metric on the training rows whose labels data.label_fraction hid:
    how good the pseudo-labels it hands the student are. None without such rows (all labels
    kept, or rows streamed from disk)."""
    from distill_export.data.dataset import labeled_rows
    from distill_export.data.streaming import is_streamed

    hidden = data.train.hidden
    if hidden is None or any(is_streamed(v) for v in data.train.inputs.values()):
        return None
    rows = labeled_rows(hidden).nonzero().squeeze(1)
    if len(rows) == 0:
        return None
    names = [m for m in getattr(teacher, "modality_names", data.train.inputs) if m in data.train.inputs]
    outputs = torch.cat([  # in chunks: a copy of every hidden row's clip would double the data's memory
        predict(teacher.forward_features, {m: data.train.inputs[m][part].to(device) for m in names}, len(part))[1]
        for part in rows.split(1024)])
    finite_outputs(outputs, source, "unlabeled training rows")
    return {"rows": int(len(rows)), task.headline: task.evaluate(outputs.numpy(), hidden[rows].numpy(), data)[task.headline]}


def train_teacher(config, data: Dataset, device, out_path, quiet: bool = False, modalities=None,
                  label: str = "teacher ", checkpoint=None) -> dict:
    """Train on the labeled training rows, pick the best epoch on val, save, return metrics.
    `modalities` restricts the teacher (the self-training control sees the student's only);
    `checkpoint` (train.Checkpoint) is written every epoch and resumed from when present."""
    cfg = config.teacher
    task = get_task(config.task)
    torch.manual_seed(config.seed)
    built = task.build_teacher(config, data, modalities)  # e.g. detection's clip teacher
    if built is None:
        kwargs = teacher_kwargs(data, cfg.width, cfg.modality_dropout, modalities, cfg.fusion)
        arch, cls = TEACHER_FUSIONS[cfg.fusion]
        teacher = cls(**kwargs).to(device)
    else:
        arch, kwargs, teacher = built
        teacher = teacher.to(device)
    experts = arch == TEACHER_FUSIONS["late"][0]  # a product of per-modality experts, trained one by one
    train = data.train.subset(data.train.labeled.nonzero().squeeze(1))
    x = {m: v.to(device) for m, v in train.inputs.items()}
    y = train.labels.to(device)
    val_x = {m: v.to(device) for m, v in data.val.inputs.items()}
    val_y = data.val.labels.numpy()

    forward, fetch = speed.prepare(teacher, x, config, device, conv_student=False)

    def batch_loss(rows, xb=None):
        rows = rows.to(device)
        loss = task.supervised_loss(forward({m: v[rows] for m, v in x.items()} if xb is None else xb), y[rows])
        return loss * ddp.row_share(len(rows))  # 1.0 in one process

    def val_score():
        _, outputs = predict(teacher.forward_features, val_x, len(data.val))
        return task.score(outputs.numpy(), val_y)

    spec = TrainSpec(cfg.epochs, cfg.lr, cfg.batch_size, seed=config.seed, rows_per_epoch=len(data.train),
                     autocast=speed.autocast_on(config, device))
    if experts:
        if fetch is not None or ddp.is_distributed():
            # The experts train one at a time on in-memory tensors (train_experts); a streamed
            # or multi-process late teacher is not built yet.
            raise ConfigError("teacher.fusion=late trains in one process on in-memory data: use "
                              "data.streaming=off and no --nproc/torchrun, or teacher.fusion=concat")
        result = train_experts(teacher, x, y, val_x, data.val.labels, spec, label, quiet, checkpoint, task)
    else:
        result = train_loop([teacher], batch_loss, len(train), val_score, spec, label, quiet,
                            checkpoint=checkpoint, fetch=fetch)
    save_checkpoint(
        out_path, teacher, kind="teacher", arch=arch, arch_kwargs=kwargs,
        meta={
            **task.export_meta(data),
            "dataset": data.name,
            "best_epoch": result.best_epoch,
            "fusion": cfg.fusion,
            **({"experts": result.experts} if experts else {}),
            "input_shapes": {m: list(spec.shape) for m, spec in data.modalities.items() if m in kwargs["modalities"]},
        },
    )
    info = {"best_epoch": result.best_epoch, "history": result.history}
    if experts:
        info["expert_temperatures"] = dict(zip(teacher.modality_names, teacher.temperatures.tolist()))
        info["experts"] = result.experts  # modality -> its best epoch and val accuracy
    return info


def train_experts(teacher, x, y, val_x, val_y, spec, label, quiet, checkpoint, task):
    """Late fusion: each expert trained alone on the labeled rows, keeping its own best epoch on
    val, then its temperature fitted on val (NLL), so no expert's overconfidence (a text expert
    fitted to 50 captions) outvotes the others in the product. Returns the last expert's
    TrainResult (its history), with every expert's best epoch and val accuracy in `.experts`."""
    from distill_export.train import Checkpoint

    device = y.device
    best = {}
    result = None
    for m in teacher.modality_names:
        # Each expert starts from the same seeded init whatever the other modalities are, so the
        # self-training control's image-only teacher is exactly this teacher's image expert.
        torch.manual_seed(spec.seed)
        for part in (*teacher.encoders[m].modules(), teacher.heads[m]):
            if hasattr(part, "reset_parameters"):
                part.reset_parameters()

        def batch_loss(rows, m=m):
            rows = rows.to(device)
            return task.supervised_loss(teacher.expert(m, x[m][rows]), y[rows])

        def val_score(m=m):
            _, outputs = predict(lambda v: (v, teacher.expert(m, v)), val_x[m], len(val_y))
            return task.score(outputs.numpy(), val_y.cpu().numpy())

        ckpt = checkpoint and Checkpoint(checkpoint.path.with_name(f"{checkpoint.path.stem}.{m}.pt"), f"{checkpoint.key}:{m}")
        result = train_loop([teacher.encoders[m], teacher.heads[m]], batch_loss, len(y), val_score, spec,
                            f"{label.strip()} ({m}) ", quiet, checkpoint=ckpt)
        best[m] = {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy}
    teacher.eval()
    with torch.no_grad():
        val_logits = {m: predict(lambda v, m=m: (v, teacher.expert(m, v)), val_x[m], len(val_y))[1]
                      for m in teacher.modality_names}
    teacher.calibrate(val_logits, val_y)
    result.experts = best
    return result
