"""Modality loaders (image, audio, text) on tiny files the tests write, and the teacher's
per-kind encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _byo_fixtures import class_image, make_manifest, tone, write_png, write_wav
from distill_export.config import DataConfig
from distill_export.data import load_dataset
from distill_export.data import loaders
from distill_export.data.audio import DEMO_AUDIO_SPEC, log_mel
from distill_export.errors import DataError
from distill_export.nets.teacher import FusionTeacher
from distill_export.train_teacher import teacher_kwargs


def test_image_grayscale_and_rgb(tmp_path):
    gray = write_png(tmp_path / "g.png", class_image(1))
    rgb = write_png(tmp_path / "c.png", class_image(1, rgb=True))
    im = loaders.read_image(gray)
    assert loaders.is_grayscale(im) and not loaders.is_grayscale(loaders.read_image(rgb))
    x = loaders.image_to_array(im, (8, 8), rgb=False)
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x[0, 3, 3] == pytest.approx(250 / 255)
    y = loaders.image_to_array(loaders.read_image(rgb), (16, 12), rgb=True)  # resized
    assert y.shape == (3, 16, 12)


def test_image_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        loaders.read_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match="not an image"):
        loaders.read_image(tmp_path / "junk.png")
    good = write_png(tmp_path / "ok.png", np.random.default_rng(0).integers(0, 255, (64, 64)))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match="corrupt|not an image"):
        loaders.read_image(tmp_path / "cut.png")
    with pytest.raises(DataError, match="not found"):
        loaders.read_image(tmp_path / "missing.png")


def test_audio_log_mel_and_resampling(tmp_path):
    wave8 = tone(800, 8000, seed=1)
    x, sr = loaders.load_audio(write_wav(tmp_path / "a8.wav", wave8, 8000))
    assert sr == 8000 and x.shape == (1, DEMO_AUDIO_SPEC["n_mels"], DEMO_AUDIO_SPEC["n_frames"])
    torch.testing.assert_close(torch.from_numpy(x[0]), log_mel(wave8.astype(np.float32), **DEMO_AUDIO_SPEC),
                               atol=0.05, rtol=0)  # 16-bit quantisation of the written file
    # The same tone at 16 kHz is resampled to 8 kHz: its loudest mel band stays the same.
    y, sr16 = loaders.load_audio(write_wav(tmp_path / "a16.wav", tone(800, 16000, seed=1), 16000))
    assert sr16 == 16000 and y.shape == x.shape
    assert int(y[0].mean(1).argmax()) == int(x[0].mean(1).argmax())
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(DataError, match="cannot read WAV"):
        loaders.load_audio(tmp_path / "bad.wav")


def test_text_hashing_is_stable_and_padded():
    a = loaders.hash_text("Hello world")
    assert a.shape == (loaders.TEXT_MAX_TOKENS,) and a.dtype == np.int64
    assert np.array_equal(a, loaders.hash_text("hello   WORLD"))  # case and spacing do not matter
    n = int((a > 0).sum())
    assert 0 < n < loaders.TEXT_MAX_TOKENS and not a[n:].any()  # ids then padding (0)
    assert a.max() < loaders.TEXT_BUCKETS
    assert not np.array_equal(a, loaders.hash_text("goodbye world"))
    assert len(loaders.hash_text("word " * 500)) == loaders.TEXT_MAX_TOKENS  # truncated


def test_column_kinds():
    assert loaders.kind_of_column("image", []) == "image"
    assert loaders.kind_of_column("audio_left", []) == "audio"
    assert loaders.kind_of_column("photo", ["a/b.JPG", "c.png"]) == "image"
    assert loaders.kind_of_column("speech", ["x.wav"]) == "audio"
    assert loaders.kind_of_column("caption", ["a dog runs"]) == "text"


def test_manifest_with_text_feeds_a_teacher(tmp_path):
    data = load_dataset(DataConfig(source=str(make_manifest(tmp_path))), seed=0)
    assert {m: s.kind for m, s in data.modalities.items()} == {"image": "image", "audio": "audio", "text": "text"}
    assert data.train.inputs["text"].dtype == torch.int64
    teacher = FusionTeacher(**teacher_kwargs(data, width=4, modality_dropout=0.0)).eval()
    assert type(teacher.encoders["text"]).__name__ == "TextEncoder"
    assert type(teacher.encoders["audio"]).__name__ == "ConvEncoder"
    feats, logits = teacher.forward_features({m: v[:5] for m, v in data.train.inputs.items()})
    assert logits.shape == (5, 3) and torch.isfinite(feats).all()
    # Dropping text (zeroed ids = all padding) is well defined.
    _, dropped = teacher.forward_features({m: (torch.zeros_like(v[:5]) if m == "text" else v[:5])
                                           for m, v in data.train.inputs.items()})
    assert torch.isfinite(dropped).all()


def test_mixed_gray_and_rgb_become_rgb(tmp_path):
    path = make_manifest(tmp_path, modalities=("image",))
    write_png(tmp_path / "img" / "dog_0.png", class_image(1, rgb=True))
    data = load_dataset(DataConfig(source=str(path)), seed=0)
    assert data.modalities["image"].shape == (3, 8, 8)
    forced = load_dataset(DataConfig(source=str(path), image_mode="grayscale", image_size=12), seed=0)
    assert forced.modalities["image"].shape == (1, 12, 12)


def test_optional_sentence_embeddings(tmp_path):
    """data.text_encoder=wordllama: a pip package that ships its weights (skipped if absent)."""
    pytest.importorskip("wordllama")
    data = load_dataset(DataConfig(source=str(make_manifest(tmp_path, modalities=("image", "text"))),
                                   text_encoder="wordllama"), seed=0)
    spec = data.modalities["text"]
    assert spec.kind == "vector" and spec.shape[0] > 0 and data.train.inputs["text"].dtype == torch.float32
    teacher = FusionTeacher(**teacher_kwargs(data, width=4, modality_dropout=0.0)).eval()
    _, logits = teacher.forward_features({m: v[:4] for m, v in data.train.inputs.items()})
    assert logits.shape == (4, 3)


def test_sentence_embeddings_say_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wordllama", None)  # as if not installed
    with pytest.raises(DataError, match="pip install wordllama"):
        loaders.sentence_embeddings(["a dog"])
