"""Twenty-first hostile audit, weights and decoding (issue 24): B3 (a --student-init BatchNorm
running_var below 0 was loaded: the student's logits were all NaN, scored as class 0 at 33.3%,
exported, and validate blamed the parity file), B4 (a head.bias of 4 entries beside a 3-row
head.weight was "a 3-class head for 3 classes: replaced") and B5 (a 16-bit-per-channel colour PNG
was decoded as 8 bits: a picture of values 0..255 came back all zeros). One `error:` line, exit 2,
nothing written."""

from __future__ import annotations

import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from _cli_checks import snapshot
from _weights_world import one_line_error, runner
from distill_export.cli import app
from distill_export.errors import CheckpointError, DataError, TrainingDiverged
from distill_export.nets.students import create_student

VAR = "backbone.0.1.running_var"  # tiny_cnn's first BatchNorm


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """3 classes of 8x8 gray images: the default student is tiny_cnn(3 classes, 1 channel, 8)."""
    from _byo_fixtures import make_manifest

    return make_manifest(tmp_path_factory.mktemp("audit21_data"), per_class=6, modalities=("image",))


def student_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in create_student("tiny_cnn", 3, 1, 8).state_dict().items()}


def refused_run(manifest, tmp_path, path) -> str:
    """`run --student-init path`: one line, exit 2, nothing written (the refusal comes in preflight)."""
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["run", "--data", str(manifest), "--student-init", str(path),
                                              "--out", str(tmp_path / "r"), "-q"]))
    assert snapshot(tmp_path) == before and not (tmp_path / "r").exists()
    return line


# ----- B3: a negative running variance, and outputs that are not finite ----------------------------


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_a_negative_batchnorm_running_var_in_a_student_init_is_refused(manifest, tmp_path, fmt):
    state = student_state()
    state[VAR] = -torch.ones_like(state[VAR])
    path = tmp_path / f"negvar.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    line = refused_run(manifest, tmp_path, path)
    assert line == (f"error: --student-init {path}: tensor '{VAR}' holds 8 negative values (of 8); a BatchNorm "
                    "running variance is never negative (the outputs of the student would be NaN), refused"), line


def test_a_student_init_whose_outputs_overflow_is_refused_at_load(manifest, tmp_path):
    """Finite weights, no negative variance, and still inf/NaN logits on real rows: the last guard,
    as preflight.check_teacher_outputs is for a teacher file."""
    state = student_state()
    for key in ("backbone.0.1.weight", "backbone.2.1.weight", "head.weight"):
        state[key] = torch.full_like(state[key], 1e38)
    path = tmp_path / "overflow.pt"
    torch.save(state, path)
    line = refused_run(manifest, tmp_path, path)
    assert line.startswith(f"error: --student-init {path}: the outputs of the student are not finite (NaN or inf "
                           "on the first 2 training rows with these weights loaded)"), line


def test_a_student_whose_test_outputs_are_not_finite_is_not_scored():
    """The end-of-run guard: NaN rows were scored as class 0 and the model saved and exported."""
    from distill_export.distill import test_outputs

    class Nan(nn.Module):
        def forward_features(self, x):
            return x, torch.full((len(x), 3), float("nan"))

    class Split:
        inputs = {"image": torch.zeros(5, 1, 8, 8)}

        def __len__(self):
            return 5

    data = SimpleNamespace(test=Split())
    with pytest.raises(TrainingDiverged) as info:
        test_outputs(Nan(), data, "image", torch.device("cpu"), "baseline")
    assert str(info.value).startswith("training of 'baseline' ended with outputs that are not finite (NaN or inf "
                                      "on 5 of 5 test rows); it is not scored"), info.value


# ----- B4: a head that contradicts itself -----------------------------------------------------------


HEADS = {  # name: (change to the file's head, what the line says after "does not fit student tiny_cnn: ")
    "bias_4_for_3_rows": ({"head.bias": torch.zeros(4)},
                          "its head is inconsistent: head.bias has shape (4,) and head.weight (3, 32) has 3 rows "
                          "(one bias per class)"),
    "bias_2d": ({"head.bias": torch.zeros(3, 1)},
                "its head is inconsistent: head.bias has shape (3, 1) and head.weight (3, 32) has 3 rows"),
    "weight_1d": ({"head.weight": torch.zeros(96)},
                  "head.weight has shape (96,), the student's is (3, 32) (only a head's class count"),
    "other_features": ({"head.weight": torch.zeros(3, 16)},
                       "head.weight has shape (3, 16), the student's is (3, 32)"),
    "other_features_10_classes": ({"head.weight": torch.zeros(10, 16), "head.bias": torch.zeros(10)},
                                  "head.weight has shape (10, 16), the student's is (3, 32)"),
}


@pytest.mark.parametrize("case", sorted(HEADS))
def test_an_inconsistent_student_init_head_is_refused(manifest, tmp_path, case):
    change, says = HEADS[case]
    path = tmp_path / f"{case}.pt"
    torch.save({**student_state(), **change}, path)
    line = refused_run(manifest, tmp_path, path)
    assert line.startswith(f"error: --student-init {path} does not fit student tiny_cnn: {says}"), line


def test_a_head_without_its_bias_is_named_as_missing(tmp_path):
    from distill_export.nets.student_init import init_student

    state = student_state()
    del state["head.bias"]
    torch.save(state, tmp_path / "nobias.pt")
    with pytest.raises(CheckpointError, match=r"1 of the student's are missing \(e.g. 'head.bias'\)"):
        init_student(create_student("tiny_cnn", 3, 1, 8), tmp_path / "nobias.pt", "tiny_cnn")


def test_a_consistent_head_of_another_class_count_is_still_replaced(tmp_path, capsys):
    from distill_export.nets.student_init import init_student

    torch.save({**student_state(), "head.weight": torch.ones(10, 32), "head.bias": torch.ones(10)}, tmp_path / "h.pt")
    model = init_student(create_student("tiny_cnn", 3, 1, 8), tmp_path / "h.pt", "tiny_cnn")
    assert model.state_dict()["head.weight"].shape == (3, 32)
    assert "has a 10-class head and the data has 3 classes" in capsys.readouterr().err


# ----- B5: a 16-bit-per-channel colour PNG ---------------------------------------------------------


def png16(path, pixels: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write colour at 16 bits per channel)."""
    h, w = pixels.shape[:2]
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


DARK = np.arange(64, dtype=np.uint16).reshape(8, 8) * 4  # 0..252 of 65535: all in the low byte
WIDE_PNGS = {2: (3, "16-bit-per-channel colour (RGB)"), 6: (4, "16-bit-per-channel colour (RGBA)"),
             4: (2, "16-bit gray with alpha")}


@pytest.mark.parametrize("colour_type", sorted(WIDE_PNGS))
def test_a_16_bit_colour_png_is_refused_not_read_as_8_bits(tmp_path, colour_type):
    from distill_export.data import loaders

    channels, what = WIDE_PNGS[colour_type]
    path = tmp_path / f"wide{colour_type}.png"
    png16(path, np.stack([DARK] * channels, -1), colour_type)
    with pytest.raises(DataError) as info:
        loaders.read_image(path)
    assert str(info.value) == (f"image {path} is a {what} PNG, which the decoder reads as 8 bits (the low byte of "
                               "each sample would be dropped): save it as 8-bit colour or 16-bit gray")


def test_16_bit_gray_pngs_keep_their_range(tmp_path):
    from PIL import Image

    from distill_export.data import loaders

    png16(tmp_path / "hand.png", DARK, 0)
    Image.fromarray(DARK).save(tmp_path / "pil.png")
    for name in ("hand.png", "pil.png"):
        x = loaders.image_to_array(loaders.read_image(tmp_path / name), (8, 8), rgb=False)
        np.testing.assert_allclose(x[0], DARK / 65535.0, rtol=1e-6)


def test_a_manifest_with_a_16_bit_colour_png_is_refused_in_one_line(manifest, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(manifest.parent, data)
    image = next(iter(sorted((data / "img").glob("*.png"))))
    png16(image, np.stack([DARK] * 3, -1), 2)
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["run", "--data", str(data / manifest.name),
                                              "--out", str(tmp_path / "r"), "-q"]))
    assert f"image {image} is a 16-bit-per-channel colour (RGB) PNG, which the decoder reads as 8 bits" in line, line
    assert snapshot(tmp_path) == before
