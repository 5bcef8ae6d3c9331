"""Seventh hostile audit, weights, records and 24-bit WAV: W_si_f4/P_f4same/T_f4/NP8 (a float4
weight was a traceback: torch has no isfinite for it), W_si_meta/NP7/T_t_meta/P_s_meta (a meta
tensor was a traceback, or a line naming nothing), RJ_speedinf/RJ_recnan/RJ_itneg/RJ_sizeneg/
RJ_timneg/RJ_pval2 (report.json with an infinite speedup, a NaN recommendation, negative counts or
timings or a p-value of 2.5 was rendered) and DW_pcm24 (24-bit PCM WAV was refused). One `error:`
line, exit 2, nothing changed. docs/reliability.md ("Ninth round") lists them with these tests."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import yaml

from _cli_checks import snapshot
from _weights_world import KEY, SMALL, cli, make_world, one_line_error, runner
from distill_export.cli import app
from distill_export.errors import CheckpointError
from distill_export.nets.checkpoint import check_state_dict, save_checkpoint
from distill_export.nets.students import create_student


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("audit7_weights"))


def as_f4(t):
    """float4_e2m1fn_x2 holds two 4-bit values a byte: the audit's bytes viewed as float4."""
    return torch.zeros(t.shape, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)


def as_meta(t):
    return torch.empty_like(t, device="meta")


BAD = {  # name: (the tensor made from a float one, what the line says after the tensor's name)
    "float4": (as_f4, "is float4_e2m1fn_x2, a 4-bit storage format of quantized weights"),
    "meta": (as_meta, "is on the meta device: it holds no values"),
}


# ----- W_si_f4 / W_si_meta / NP8 / NP7: --student-init, with and without torchrun ------------------


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("nproc", [None, "2"])
def test_a_float4_or_meta_student_init_tensor_is_named_in_one_line(world, tmp_path, kind, nproc):
    """W_si_f4/NP8 (isfinite traceback), W_si_meta/NP7 ("Cannot copy out of meta tensor"
    traceback, in the pre-torchrun preflight too): refused by the weight check, no folder."""
    make, says = BAD[kind]
    path = tmp_path / f"si_{kind}.pt"
    torch.save({KEY: make(torch.randn(4, 1, 3, 3)), "head.bias": torch.zeros(3)}, path)
    before = snapshot(tmp_path)
    line = one_line_error(cli(world, "run", "--student-init", str(path), "--out", str(tmp_path / "r"),
                              *(["--nproc", nproc] if nproc else [])))
    assert line.startswith(f"error: --student-init {path}: tensor '{KEY}' {says}"), line
    assert "..." not in line and line.endswith("refused"), line  # whole: no quoted span shortened
    assert snapshot(tmp_path) == before and not (tmp_path / "r").exists()


# ----- P_f4same / P_s_meta: profile FILE.pt; T_f4 / T_t_meta: --teacher ----------------------------


def student_checkpoint(path, change) -> None:
    """A student checkpoint of the registry's tiny_cnn (28x28 gray, 10 classes), one weight changed."""
    model = create_student("tiny_cnn", 10, 1, 28)
    save_checkpoint(path, model, "student", "tiny_cnn", {"num_classes": 10, "in_channels": 1, "input_size": 28},
                    {"input_shape": [1, 28, 28]})
    payload = torch.load(path, weights_only=True)
    payload["state_dict"][KEY] = change(payload["state_dict"][KEY])
    torch.save(payload, path)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_profile_names_a_float4_or_meta_weight_of_a_checkpoint(tmp_path, kind):
    """P_f4same (a traceback) and P_s_meta (a line stopping at "Error(s) in loading state_dict")."""
    make, says = BAD[kind]
    path = tmp_path / "s.pt"
    student_checkpoint(path, make)
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["profile", str(path), "--batch", "1", "--threads", "1",
                                              "--out", str(tmp_path / "p"), "-q"]))
    assert line.startswith(f"error: {path}: tensor '{KEY}' {says}"), line
    assert "..." not in line and line.endswith("refused"), line  # whole: no quoted span shortened
    assert snapshot(tmp_path) == before and not (tmp_path / "p").exists()


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_teacher_with_a_float4_or_meta_weight_is_named_in_one_line(world, tmp_path, kind):
    """T_f4 (a traceback), T_t_meta (a line naming no tensor)."""
    make, says = BAD[kind]
    payload = torch.load(world["teacher"], weights_only=True)
    payload["state_dict"]["head.weight"] = make(payload["state_dict"]["head.weight"])
    path = tmp_path / f"t_{kind}.pt"
    torch.save(payload, path)
    before = snapshot(tmp_path)
    line = one_line_error(cli(world, "train-teacher", "--teacher", str(path), "--out", str(tmp_path / "t")))
    assert line.startswith(f"error: {path}: tensor 'head.weight' {says}"), line
    assert "..." not in line and line.endswith("refused"), line  # whole: no quoted span shortened
    assert snapshot(tmp_path) == before and not (tmp_path / "t").exists()


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental", "ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.complex32, torch.float8_e8m0fnu])
def test_every_dtype_outside_the_allow_list_is_named_not_a_traceback(dtype):
    """Not only float8 and float4: any dtype the loaders do not compute in (isfinite or copy_
    has no kernel for some) is one CheckpointError naming the file, tensor and dtype."""
    value = torch.zeros(4, dtype=torch.uint8).view(dtype) if dtype.itemsize == 1 else torch.zeros(4).to(dtype)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"^w\.pt: tensor 'k' is {name}, ") as err:
        check_state_dict({"k": value}, "w.pt")
    assert "refused" in str(err.value) and "\n" not in str(err.value)
    quantized = torch.quantize_per_tensor(torch.zeros(4), 0.1, 0, torch.qint8)
    with pytest.raises(CheckpointError, match=r"^w\.pt: tensor 'q' is qint8, a dtype distill-export does not load"):
        check_state_dict({"q": quantized}, "w.pt")
    check_state_dict({"w": torch.zeros(2, dtype=torch.bfloat16), "n": torch.tensor(3), "m": torch.ones(2) > 0},
                     "w.pt")  # what models hold passes


# ----- RJ_*: report.json numbers are finite, counts and times >= 0, p in [0, 1] --------------------


def corrupt(run, edit):
    record = json.loads((run / "report.json").read_text())
    edit(record)
    (run / "report.json").write_text(json.dumps(record))  # Infinity / NaN as Python writes them


def _first(mapping):
    return next(iter(mapping))


EDITS = {  # id: (the edit, the field the line names, what pydantic says)
    "RJ_speedinf": (lambda r: r["speedups"][0].update(speedup=float("inf")), "speedups.0.speedup", "finite number"),
    "RJ_recnan": (lambda r: r["recommended"][_first(r["recommended"])].update(p50_ms=float("nan")),
                  "recommended.{target}.p50_ms", "finite number"),
    "RJ_itneg": (lambda r: r["latency"][0].update(iterations=-3), "latency.0.iterations", "greater than or equal to 1"),
    "RJ_sizeneg": (lambda r: r["latency"][0].update(size_bytes=-1), "latency.0.size_bytes", "greater than or equal to 0"),
    "RJ_timneg": (lambda r: r["timings"].update(total=-1e9), "timings.total", "greater than or equal to 0"),
    "RJ_pval2": (lambda r: r.update(kd_gain_p_value=2.5), "kd_gain_p_value", "less than or equal to 1"),
    "RJ_cmpp": (lambda r: r["comparisons"][_first(r["comparisons"])].update(p_value=-0.1),
                "comparisons.{pair}.p_value", "greater than or equal to 0"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_hand_edited_number_in_report_json_is_a_corrupt_record(run_copy, case):
    """RJ_speedinf ("×inf"), RJ_recnan ("p50 nan ms"), RJ_itneg/RJ_sizeneg/RJ_timneg/RJ_pval2
    (accepted, rc 0): refused on load, one line naming the field, nothing written."""
    edit, field, says = EDITS[case]
    record = json.loads((run_copy / "report.json").read_text())
    assert record["speedups"] and record["recommended"] and record["comparisons"], "the tiny run profiles"
    field = field.format(target=_first(record["recommended"]), pair=_first(record["comparisons"]))
    corrupt(run_copy, edit)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]))
    assert line.startswith(f"error: {run_copy / 'report.json'} is corrupt: {field}: ") and says in line, line
    assert snapshot(run_copy) == before


def test_the_product_never_writes_an_infinite_speedup_for_a_0_ms_row():
    """A p50 of 0 ms (a coarse clock) has no ratio: no speedup entry and no recommendation
    speedup (it was a ZeroDivisionError, and inf would be refused on load)."""
    from distill_export.profiling import speedups
    from distill_export.recommend import recommend

    rows = [{"model": "teacher", "format": "onnx", "backend": "ort", "device": "cpu", "batch": 1, "threads": 1,
             "p50_ms": 2.0},
            {"model": "student", "format": "onnx", "backend": "ort", "device": "cpu", "batch": 1, "threads": 1,
             "p50_ms": 0.0}]
    assert speedups(rows) == []
    parity = {"accuracy": 0.9, "accuracy_drop": 0.0, "passed": True, "gates": {}}
    rec = recommend({"latency": rows, "exports": {"onnx": {"path": "s.onnx", "precision": "fp32", "parity": parity}}})
    chosen = rec[_first(rec)]
    assert chosen["p50_ms"] == 0.0 and chosen["speedup_vs_teacher"] is None and chosen["speedup_vs_fp32_onnx"] is None


# ----- DW_pcm24: 24-bit integer PCM is read ------------------------------------------------------


def pcm24_wav(path, samples: np.ndarray, sr: int = 8000) -> None:
    """A mono 24-bit PCM WAV of integer `samples` in [-2**23, 2**23)."""
    data = b"".join(int(v & 0xFFFFFF).to_bytes(3, "little") for v in samples.astype(np.int64))
    fmt = struct.pack("<HHIIHH", 1, 1, sr, sr * 3, 3, 24)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_a_24_bit_pcm_wav_reads_as_the_known_signal(tmp_path):
    """DW_pcm24: refused as "unsupported sample width 24 bits". A 440 Hz sine at half scale and
    the extremes read back to within one 24-bit step, sign included."""
    from distill_export.data.audio import read_wav

    t = np.arange(800) / 8000
    sine = np.round(0.5 * np.sin(2 * np.pi * 440 * t) * 2**23).astype(np.int64)
    samples = np.r_[sine, -(2**23), 2**23 - 1, -1, 0, 1]
    pcm24_wav(tmp_path / "s24.wav", samples)
    wave, sr = read_wav(tmp_path / "s24.wav")
    assert sr == 8000 and wave.dtype == np.float32 and wave.shape == samples.shape
    np.testing.assert_allclose(wave, samples / 2**23, atol=2**-23)
    assert wave[800] == -1.0 and wave[-3] < 0 < wave[-1]


def test_a_24_bit_pcm_wav_trains_in_a_run(world, tmp_path):
    """The manifest's first WAV rewritten as 24-bit PCM: the teacher trains (exit 0)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["manifest"].parent, data)
    wav = sorted((data / "wav").glob("*.wav"))[0]
    pcm24_wav(wav, np.round(0.3 * np.sin(np.arange(4000) / 5) * 2**23).astype(np.int64))
    teach = tmp_path / "teach.yaml"
    teach.write_text(yaml.safe_dump({**SMALL, "teacher": {"epochs": 1, "width": 8}}))
    result = runner.invoke(app, ["train-teacher", "--config", str(teach), "--data", str(data / "manifest.csv"),
                                 "--out", str(tmp_path / "t"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t" / "teacher.pt").is_file()
