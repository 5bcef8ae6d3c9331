"""Model I/O: build, load and save the student and the teacher (our checkpoints, and through
nets/external.py a .pt2 program or a package.module:factory).

Stages (distill, train_teacher, rounds, pipeline), profiling and preflight load models from
here, so a model file never has to import a stage.
"""

from __future__ import annotations

import torch

from distill_export.data import Dataset
from distill_export.errors import CheckpointError, DataError
from distill_export.nets.checkpoint import (check_state_dict, class_order_mismatch, load_checkpoint, load_state,
                                           save_checkpoint)
from distill_export.nets.external import is_external_teacher, load_external_teacher
from distill_export.nets.saved_arch import check_fits, check_input_shapes, student_arch
from distill_export.nets.students import SplitNet, create_student, student_names
from distill_export.nets.teacher import FusionTeacher, LateFusionTeacher, teacher_archs, teacher_class


# ----- student ---------------------------------------------------------------------------------


def student_meta(config, data: Dataset, teacher_name: str, task_meta: dict) -> dict:
    """What the checkpoint carries besides weights: the task's facts first (Task.export_meta,
    e.g. class_names), then how to feed the model."""
    spec = data.modalities[config.data.student_modality]
    return {
        **task_meta,
        "input_name": spec.name,
        "input_shape": list(spec.shape),
        "input_layout": spec.layout,
        "norm_mean": spec.mean,
        "norm_std": spec.std,
        "teacher": teacher_name,
        "dataset": data.name,
    }


def new_student(config, data: Dataset) -> SplitNet:
    """The same initial weights for baseline and student: seeded, or from --student-init."""
    from distill_export.nets.student_init import init_student

    spec = data.modalities[config.data.student_modality]
    torch.manual_seed(config.seed)
    model = create_student(config.student.name, data.num_outputs, in_channels=spec.shape[0],
                           input_size=input_size(spec))
    if config.student.init_weights:
        init_student(model, config.student.init_weights, config.student.name, data.target_names)
        check_init_outputs(model, data, config.data.student_modality, config.student.init_weights)
    return model


PROBE_ROWS = 2  # training rows the loaded student is run on: enough to see NaN, cheap at every load


def check_init_outputs(model, data: Dataset, modality: str, path) -> None:
    """The last guard on --student-init (twenty-first audit B3), as preflight.check_teacher_outputs
    is for a teacher file: finite weights can still give NaN or inf in eval mode (running
    statistics that overflow), which training (batch statistics) hides until the student is scored.
    Streamed columns decode in workers: the end-of-run check (distill.test_outputs) covers them.
    A forward that fails is not this probe's to word: the stage that runs the student says it."""
    from distill_export.data.streaming import is_streamed
    from distill_export.errors import DistillExportError

    column = data.train.inputs.get(modality)
    rows = min(PROBE_ROWS, len(data.train))
    if column is None or rows == 0 or is_streamed(column):
        return
    was_training = model.training
    model.eval()  # running statistics, as the student is scored and exported
    try:
        with torch.no_grad():
            x = column[:rows]  # what predict() feeds it, batch by batch
            outputs = model.forward_features(x.to(next(model.parameters()).device))
    except DistillExportError:
        raise
    except Exception:  # noqa: BLE001 - see above
        return
    finally:
        model.train(was_training)
    if not all(bool(torch.isfinite(t).all()) for t in _tensors(outputs) if t.is_floating_point()):
        raise CheckpointError(f"--student-init {path}: the outputs of the student are not finite (NaN or inf on the first "
                              f"{rows} training rows with these weights loaded); check its weights (BatchNorm "
                              "running statistics, overflowing values), refused")


def _tensors(out):
    """The tensors in a forward's result: (features, logits), or a detector's maps in a tuple or dict."""
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return [t for item in items for t in _tensors(item)]


def input_size(spec) -> int:
    """The smaller spatial side of an image-like (C, H, W) modality, 0 for other shapes."""
    return int(min(spec.shape[1:])) if len(spec.shape) == 3 else 0


def load_student(path, factory: str | None = None) -> tuple[SplitNet, dict]:
    """factory: the user's own package.module:factory student (the run's student.name), the only
    arch besides the registry's that the file may name (nets/saved_arch.py: a file never picks
    code to import)."""
    payload = load_checkpoint(path, kind="student")
    arch, kw = student_arch(path, payload, factory, student_names())
    check_input_shapes(path, payload.get("meta"), "input_shape")
    build = lambda: create_student(arch, kw["num_classes"], kw["in_channels"], kw.get("input_size", 0))  # noqa: E731
    if ":" not in arch:  # a registry student: built on the meta device first (a factory is the user's code)
        check_fits(path, build, payload.get("state_dict"), kw, f"student {arch}")
    return load_state(build(), payload["state_dict"], path).eval(), payload["meta"]


def save_student(path, model: SplitNet, config, data: Dataset, teacher_name: str, extra: dict,
                 task_meta: dict) -> None:
    spec = data.modalities[config.data.student_modality]
    save_checkpoint(
        path, model, kind="student", arch=config.student.name,
        arch_kwargs={"num_classes": data.num_outputs, "in_channels": spec.shape[0], "input_size": input_size(spec)},
        meta={**student_meta(config, data, teacher_name, task_meta), **extra},
    )


# ----- teacher ---------------------------------------------------------------------------------


def load_teacher(path, data: Dataset | None = None, weights=None, strict: bool = False,
                 max_call_s: float | None = None) -> FusionTeacher:
    """Our checkpoint, or (nets/external.py) a .pt2 program or a package.module:factory.
    strict (a teacher the user gave): every data column must be one the teacher reads, as it was built.
    max_call_s: a .pt2's per-call time limit (validate.max_call_s, profile.max_call_s; nets/pt2_bounds.py)."""
    if is_external_teacher(path):
        teacher = load_external_teacher(path, data, weights, max_call_s)
        check_state_dict(teacher.state_dict(), f"teacher {path}")  # a .pt2's or factory's weights: finite
        return teacher
    try:
        payload = load_checkpoint(path, kind="teacher")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; a teacher is a distill-export checkpoint (.pt), a torch.export "
                              "program (.pt2) or package.module:factory") from None
    try:
        cls = teacher_class(payload.get("arch", "fusion_teacher"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc} (known: {', '.join(teacher_archs())})") from None
    kw = payload.get("arch_kwargs")
    if not isinstance(kw, dict):
        raise CheckpointError(f"{path}: arch_kwargs is a {type(kw).__name__}, not a dict")
    check_input_shapes(path, payload.get("meta", {}), "input_shapes")
    check_fits(path, lambda: cls(**kw), payload.get("state_dict"), kw, f"teacher {payload.get('arch', 'fusion_teacher')}")
    model = load_state(cls(**kw), payload["state_dict"], path)
    if data is not None:
        kw = payload["arch_kwargs"]
        if strict:
            check_teacher_columns(path, kw, data)
        shapes = payload.get("meta", {}).get("input_shapes", {})
        for m, shape in shapes.items():
            if m in data.modalities and tuple(shape) != tuple(data.modalities[m].shape):
                raise CheckpointError(f"teacher {path} was trained on {m} of shape {tuple(shape)}; "
                                      f"the data gives {tuple(data.modalities[m].shape)}")
        if kw["num_classes"] != data.num_outputs:
            raise CheckpointError(
                f"teacher {path} predicts {kw['num_classes']} classes, the data has {data.num_outputs}"
            )
        check_class_order(f"teacher {path}", payload.get("meta", {}).get("class_names"), data.target_names)
        missing = set(kw["modalities"]) - set(data.modalities)
        if missing:
            raise CheckpointError(f"teacher {path} needs modalities the data lacks: {sorted(missing)}")
    return model.eval()


def check_class_order(what: str, declared, names) -> None:
    """A teacher whose columns are other classes (another label order, other labels) would teach
    the wrong classes in silence (fourteenth audit B3): refused in one line."""
    why = class_order_mismatch(declared, names)
    if why is not None:
        raise CheckpointError(f"{what} was trained on other classes than the data's: {why}; train a "
                              "teacher on this data (train-teacher), or give it data with the same labels")


def check_teacher_columns(path, arch_kwargs: dict, data: Dataset) -> None:
    """A column the teacher was not built for (one it has no encoder for, or text read another
    way than in training) fails with one line naming the manifest's header row."""
    where = f"{data.info['manifest']}:1" if data.info.get("manifest") else f"dataset {data.name}"
    kinds = arch_kwargs.get("kinds") or {}
    derived = data.info.get("frame_of") or {}  # e.g. image: the target frame of the video column
    for m, spec in data.modalities.items():
        if m in derived and derived[m] in arch_kwargs["modalities"]:
            continue  # the teacher reads the clip this frame comes from
        if m not in arch_kwargs["modalities"]:
            raise DataError(f"{where}: column {m!r} is not one teacher {path} was built for (it reads "
                            f"{', '.join(sorted(arch_kwargs['modalities']))}); drop the column or train a teacher on it")
        built = kinds.get(m)
        if built and built != spec.kind:
            how = {"text": "hashed text (data.text_encoder=hashed)", "vector": "embedding vectors (e.g. data.text_encoder=wordllama)"}
            raise DataError(f"{where}: column {m!r} is read as {how.get(spec.kind, spec.kind)}, but teacher {path} "
                            f"was built for {how.get(built, built)}")


def save_expert_teacher(teacher_path, modality: str, out_path) -> dict:
    """Save one expert of a late-fusion teacher as a single-modality teacher. Experts are trained
    alone from the same seeded init, so this is the image-only teacher train_teacher would train
    on the same rows (the self-training control), without training it again."""
    payload = load_checkpoint(teacher_path, kind="teacher")
    kw = payload["arch_kwargs"]
    check_fits(teacher_path, lambda: LateFusionTeacher(**kw), payload.get("state_dict"), kw, "late_fusion_teacher")
    full = load_state(LateFusionTeacher(**kw), payload["state_dict"], teacher_path)
    one = {**kw, "modalities": {modality: kw["modalities"][modality]}, "kinds": {modality: kw["kinds"][modality]}}
    expert = LateFusionTeacher(**one)
    expert.encoders[modality].load_state_dict(full.encoders[modality].state_dict())
    expert.heads[modality].load_state_dict(full.heads[modality].state_dict())
    expert.temperatures[0] = full.temperatures[full.modality_names.index(modality)]
    meta = payload["meta"]
    trained = meta.get("experts", {}).get(modality, {})
    save_checkpoint(out_path, expert, kind="teacher", arch="late_fusion_teacher", arch_kwargs=one,
                    meta={**meta, "best_epoch": trained.get("best_epoch"), "experts": {modality: trained},
                          "input_shapes": {modality: meta["input_shapes"][modality]}})
    return {"expert_of": str(teacher_path), **trained,
            "expert_temperatures": {modality: float(expert.temperatures[0])}}
