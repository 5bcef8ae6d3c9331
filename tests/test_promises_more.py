"""More of issue 25's promise areas, at the level of behaviour:

- safe YAML: each bound (bytes, counted in UTF-8; nesting depth; aliases; expanded nodes) takes a
  document exactly at the limit and refuses one a step over it;
- recommend's tie rule: over random latencies and accuracy drops, the choice is within the tie
  tolerance of the fastest candidate, and no tied candidate has a smaller drop or, with an equal
  drop, a higher precision; a tie at exactly the tolerance is a tie;
- audio bounds: a clip exactly at the length limit, and sample rates at the ends of the range,
  are read; one sample or one hertz beyond is refused; channels are averaged;
- label sampling: per class, round(fraction x n) (at least one) labels are kept, each the row's
  own, and the seed (not a fixed order) picks which;
- the caption generator: its noise (dropped and false attributes, guesses, wordings, order)
  happens at the rates its arguments state.
"""

from __future__ import annotations

import random

import pytest

from distill_export import safe_yaml
from distill_export.recommend import PRECISION_ORDER, TIE_TOLERANCE, recommend

# ----- safe YAML bounds ----------------------------------------------------------------------


def test_byte_limit_is_in_utf8_bytes_and_exact():
    limit = safe_yaml.MAX_BYTES
    at = "# " + "x" * (limit - 3) + "\n"
    assert len(at.encode()) == limit and safe_yaml.load(at) is None
    with pytest.raises(safe_yaml.YamlLimitError, match=f"{limit + 1} bytes"):
        safe_yaml.load(at + "\n")
    wide = "# " + "é" * (limit // 2)  # fewer characters than the limit, more bytes
    assert len(wide) < limit < len(wide.encode())
    with pytest.raises(safe_yaml.YamlLimitError, match="bytes"):
        safe_yaml.load(wide)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.slow
def test_depth_alias_and_expansion_limits_are_exact():
    depth = safe_yaml.MAX_DEPTH
    assert safe_yaml.load(_nested(depth)) is not None
    with pytest.raises(safe_yaml.YamlLimitError, match="deeper"):
        safe_yaml.load(_nested(depth + 1))
    aliases = safe_yaml.MAX_ALIASES
    doc = "a: &x 1\nb: [" + ", ".join(["*x"] * aliases) + "]\n"
    assert safe_yaml.load(doc)["b"] == [1] * aliases
    with pytest.raises(safe_yaml.YamlLimitError, match="aliases"):
        safe_yaml.load(doc.replace("*x]", "*x, *x]"))
    nodes = safe_yaml.MAX_EXPANDED_NODES  # a list of n scalars is n + 1 nodes
    assert len(safe_yaml.load("[" + ",".join(["1"] * (nodes - 1)) + "]")) == nodes - 1
    with pytest.raises(safe_yaml.YamlLimitError, match="expand"):
        safe_yaml.load("[" + ",".join(["1"] * nodes) + "]")
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n" \
           "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    with pytest.raises(safe_yaml.YamlLimitError, match="expand"):
        safe_yaml.load(bomb)  # 111 aliases, 100,000+ values once expanded
    with pytest.raises(safe_yaml.YamlLimitError, match="recursive"):
        safe_yaml.load("a: &a [*a]\n")
    assert safe_yaml.load("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}


# ----- recommend's tie rule ------------------------------------------------------------------

ORT = "onnxruntime-cpu"
FORMATS = {"onnx": "fp32", "onnx-fp16": "fp16", "onnx-int8": "int8"}


def _report(p50: dict[str, float], drops: dict[str, float]) -> dict:
    exports = {f: {"path": f, "precision": prec, "runtime": "onnxruntime",
                   "parity": {"accuracy": 0.9 - drops[f], "accuracy_drop": drops[f], "passed": True,
                              "gates": {}}} for f, prec in FORMATS.items()}
    latency = [{"model": "student", "format": f, "backend": ORT, "device": "cpu", "batch": 1, "threads": 1,
                "p50_ms": p50[f]} for f in FORMATS]
    return {"exports": exports, "latency": latency}


@pytest.mark.parametrize("seed", range(4))
def test_choice_is_the_most_accurate_then_most_precise_of_the_tied(seed):
    rng = random.Random(seed)
    for _ in range(150):
        p50 = {"onnx": 1.0, **{f: rng.choice([1.0, 0.99, 0.97, 0.955, 0.95, 0.9, 0.8])
                                for f in ("onnx-fp16", "onnx-int8")}}
        drops = {f: rng.choice([0.0, 0.0, 0.002, 0.004, -0.001]) for f in FORMATS}
        rec = recommend(_report(p50, drops))["cpu-1t"]
        chosen = rec["format"]
        fastest = min(p50.values())
        tied = [f for f in FORMATS if p50[f] <= fastest * (1 + TIE_TOLERANCE)]
        assert chosen in tied, (p50, drops, chosen)

        def drop(f):
            return max(drops[f], 0.0)  # a negative drop (the export better) counts as none

        for other in tied:
            assert drop(chosen) <= drop(other), (p50, drops, chosen, other)
            if drop(other) == drop(chosen):
                assert PRECISION_ORDER.index(FORMATS[chosen]) <= PRECISION_ORDER.index(FORMATS[other])
        assert set(rec["excluded"]) == {f"{f} on {ORT}" for f in FORMATS if f != chosen}
        for f in FORMATS:
            if f != chosen:
                tie_words = "tied within 5%" in rec["excluded"][f"{f} on {ORT}"]
                assert tie_words == (f in tied), (f, rec["excluded"])


def test_a_tie_at_exactly_the_tolerance_is_a_tie():
    drops = {"onnx": 0.0, "onnx-fp16": 0.003, "onnx-int8": 0.004}
    at = recommend(_report({"onnx": 1.05, "onnx-fp16": 1.05, "onnx-int8": 1.0}, drops))["cpu-1t"]
    assert at["format"] == "onnx"  # 5% slower, no accuracy lost: FP32 wins the tie
    over = recommend(_report({"onnx": 1.0501, "onnx-fp16": 1.0501, "onnx-int8": 1.0}, drops))["cpu-1t"]
    assert over["format"] == "onnx-int8"
    assert over["speedup_vs_fp32_onnx"] == pytest.approx(1.0501)


# ----- audio length and rate bounds ----------------------------------------------------------


def _wav(path, n: int, sr: int, channels: int = 1, values=None):
    import wave

    import numpy as np

    pcm = np.zeros(n * channels, "<i2") if values is None else np.asarray(values, "<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(pcm.tobytes())
    return path


def test_audio_bounds_are_exact(tmp_path):
    from distill_export.data.audio import MAX_AUDIO_SECONDS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, read_wav
    from distill_export.errors import DataError

    sr = MIN_SAMPLE_RATE
    x, got_sr = read_wav(_wav(tmp_path / "at.wav", int(MAX_AUDIO_SECONDS * sr), sr))
    assert got_sr == sr and len(x) == MAX_AUDIO_SECONDS * sr  # exactly the limit: read whole
    with pytest.raises(DataError, match=r"60\.0 s long, more than the 60 s limit"):
        read_wav(_wav(tmp_path / "over.wav", int(MAX_AUDIO_SECONDS * sr) + 1, sr))
    assert len(read_wav(_wav(tmp_path / "half.wav", 4000, 8000), max_seconds=0.5)[0]) == 4000
    with pytest.raises(DataError, match=r"more than the 0\.5 s limit"):
        read_wav(_wav(tmp_path / "half1.wav", 4001, 8000), max_seconds=0.5)
    # the limit is in seconds of sound, whatever the channel count: a stereo clip's frames, not its samples
    assert len(read_wav(_wav(tmp_path / "st.wav", 4000, 8000, channels=2), max_seconds=0.5)[0]) == 4000
    with pytest.raises(DataError, match=r"more than the 0\.5 s limit"):
        read_wav(_wav(tmp_path / "st1.wav", 4001, 8000, channels=2), max_seconds=0.5)
    for rate in (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE):
        assert read_wav(_wav(tmp_path / f"{rate}.wav", 10, rate))[1] == rate
    for rate in (MIN_SAMPLE_RATE - 1, MAX_SAMPLE_RATE + 1):
        with pytest.raises(DataError, match="sample rate"):
            read_wav(_wav(tmp_path / f"{rate}.wav", 10, rate))
    stereo, _ = read_wav(_wav(tmp_path / "st.wav", 3, 8000, 2, [16384, 0, -32768, -32768, 32767, 32767]))
    assert stereo.tolist() == pytest.approx([0.25, -1.0, 32767 / 32768])  # channels averaged, scaled by 2^15


# ----- label sampling ------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_label_sampling_keeps_the_fraction_per_class_and_only_true_labels(fraction):
    import torch

    from distill_export.data.dataset import IGNORE_INDEX, keep_label_fraction

    sizes = {0: 40, 1: 7, 2: 1, 3: 100}
    labels = torch.cat([torch.full((n,), c) for c, n in sizes.items()])[torch.randperm(148, generator=torch.Generator().manual_seed(0))]
    out = keep_label_fraction(labels, fraction, seed=3)
    kept = out != IGNORE_INDEX
    assert torch.equal(out[kept], labels[kept])  # a kept label is the row's own
    for c, n in sizes.items():
        assert int((out == c).sum()) == (n if fraction >= 1 else max(1, round(fraction * n))), (c, fraction)
    assert torch.equal(keep_label_fraction(labels, fraction, seed=3), out)  # the seed decides
    if 0 < fraction < 1:
        others = [keep_label_fraction(labels, fraction, seed=s) != IGNORE_INDEX for s in range(4, 8)]
        assert any(not torch.equal(o, kept) for o in others)  # and another seed picks other rows


# ----- the caption generator (tools/make_captioned_digits.py) ----------------------------------


def _generator():
    import sys
    from pathlib import Path

    tools = str(Path(__file__).resolve().parents[1] / "tools")
    sys.path.insert(0, tools)
    try:
        import make_captioned_digits as gen
    finally:
        sys.path.remove(tools)
    return gen


def _parse(gen, text: str):
    """(attributes in order, their paraphrase indices, the guessed digit or None) of one caption."""
    body, _, hedge = text.partition("; ")
    guess = None
    if hedge:
        word = next(w for w in hedge.replace(",", " ").split() if w in gen.NAMES or w.isdigit())
        guess = gen.NAMES.index(word) if word in gen.NAMES else int(word)
    if body in gen.EMPTY:
        return [], [], guess
    opener = next(o for o in gen.OPENERS if body.startswith(o + " "))
    rest = body[len(opener) + 1:]
    head, sep, last = rest.rpartition(" and ")
    phrases = (head.split(", ") + [last]) if sep else [rest]
    where = {p: (a, i) for a, ps in gen.PHRASES.items() for i, p in enumerate(ps)}
    return [where[p][0] for p in phrases], [where[p][1] for p in phrases], guess


@pytest.mark.parametrize("digit", [1, 4, 8])
def test_caption_noise_happens_at_the_stated_rates(digit):
    """Over 3000 captions: true attributes kept at 1 − p_drop, false ones at false_rate a caption,
    a guess at p_guess, right at p_guess_right (else a confusable digit), only the first
    `paraphrases` wordings, the attributes shuffled; the same seed, the same captions."""
    import argparse

    import numpy as np

    gen = _generator()
    args = argparse.Namespace(p_drop=0.3, false_rate=0.8, p_guess=0.4, p_guess_right=0.25, paraphrases=2)
    caps = [gen.caption(digit, np.random.default_rng(s), args) for s in range(3000)]
    assert caps[:50] == [gen.caption(digit, np.random.default_rng(s), args) for s in range(50)]
    true = set(gen.ATTRIBUTES[digit])
    kept = false = guesses = right = 0
    false_first, indices = 0, set()
    for text in caps:
        attrs, idx, guess = _parse(gen, text)
        assert len(attrs) == len(set(attrs))
        kept += len(true & set(attrs))
        false += len(set(attrs) - true)
        indices.update(idx)
        false_first += bool(attrs) and attrs[0] not in true and bool(true & set(attrs))
        if guess is not None:
            guesses += 1
            right += guess == digit
            assert guess == digit or guess in gen.CONFUSABLE[digit]
    n = len(caps)
    assert kept / (n * len(true)) == pytest.approx(1 - args.p_drop, abs=0.03)
    assert false / n == pytest.approx(args.false_rate, abs=0.07)
    assert guesses / n == pytest.approx(args.p_guess, abs=0.03)
    assert right / guesses == pytest.approx(args.p_guess_right, abs=0.05)
    assert indices == set(range(args.paraphrases))
    assert false_first > n / 20  # shuffled: a false attribute often comes before a true one
