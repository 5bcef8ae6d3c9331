"""Captioned digits: MNIST images, each with a noisy free-text caption of its shape.

    python tools/make_captioned_digits.py --mnist ../shared/data/mnist \\
        --out ~/.cache/distill-export/captioned_digits

Writes OUT/manifest.csv (columns image, caption, label, split), the PNGs it references and
OUT/captions.json (the settings, counts and the text-only check). Seeded and offline: the
same arguments write the same files. OUT must lie outside the repository.

The text -> image case of the models/captioned_digits.yaml recipe: a teacher that reads the
caption as well as the image teaches a student that sees the image only. The captions must
carry knowledge without being a label leak, so they are noisy on purpose:
  * each digit has a few shape attributes (loops, strokes, bars, curves), each said with one
    of --paraphrases wordings (2: more wordings make the text harder to learn from few labels);
  * a true attribute is dropped with --p-drop, and each caption gains Poisson(--false-rate)
    attributes the digit does not have;
  * with --p-guess the caption ends in a hedged guess ("maybe a 7"), which names the true
    digit with --p-guess-right and otherwise a confusable one.
The text-only check fits a logistic regression on word uni+bigrams of every training caption
(all labels: an upper bound for any text expert the recipe trains on 5 labels per class) and
prints its val and test accuracy; the issue's bound is <= 65% (the defaults give 59% on test).
With 5 labels per class the same model reaches about 30%.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("~/.cache/distill-export/captioned_digits")
sys.path.insert(0, str(REPO / "tools"))
from prepare_avmnist import find, read_idx  # noqa: E402  (the same MNIST reader)
from toolargs import Parser, at_least, fail, non_negative, one_line_errors, probability  # noqa: E402

PHRASES = {  # attribute -> paraphrases (the first two share a keyword, the rest reword it)
    "loop": ["a closed loop", "one round loop", "an enclosed hole", "a ring shape"],
    "two_loops": ["two loops", "a pair of stacked loops", "two enclosed holes"],
    "loop_top": ["a loop at the top", "an upper loop", "a small hole in the upper half"],
    "loop_bottom": ["a loop at the bottom", "a lower loop", "a hole in the lower half"],
    "vertical": ["a vertical stroke", "an upright vertical line", "a straight downstroke"],
    "diagonal": ["a diagonal stroke", "a slanted diagonal line", "an angled stroke"],
    "bar_top": ["a flat bar on top", "a top bar", "a level cap line"],
    "bar_middle": ["a crossbar in the middle", "a middle bar", "a horizontal stroke halfway down"],
    "bar_bottom": ["a flat base", "a flat base stroke", "a straight foot"],
    "curve_top": ["a curve at the top", "an upper curve", "a rounded hook above"],
    "curve_bottom": ["a curve at the bottom", "a lower curve", "a bowl-like arc at the base"],
    "bumps": ["two bumps", "a pair of bumps on the right side", "twin arcs"],
}
ATTRIBUTES = {  # digit -> its true attributes
    0: ["loop", "curve_top", "curve_bottom"],
    1: ["vertical"],
    2: ["curve_top", "diagonal", "bar_bottom"],
    3: ["curve_top", "curve_bottom", "bumps"],
    4: ["vertical", "bar_middle", "diagonal"],
    5: ["bar_top", "vertical", "curve_bottom"],
    6: ["loop_bottom", "curve_top"],
    7: ["bar_top", "diagonal"],
    8: ["two_loops", "loop_top", "loop_bottom"],
    9: ["loop_top", "vertical"],
}
CONFUSABLE = {0: [6, 8], 1: [7], 2: [7, 3], 3: [5, 8], 4: [9], 5: [3, 6], 6: [0, 5], 7: [1, 9], 8: [3, 0], 9: [4, 7]}
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
OPENERS = ["a digit with", "handwritten mark showing", "shows", "a scribble with", "ink sketch:", "we see"]
EMPTY = ["a handwritten digit", "hard to describe", "a faint mark"]
HEDGES = ["maybe a {}", "could be a {}", "possibly a {}", "looks like a {}, not sure", "my guess: {}"]


def caption(digit: int, rng: np.random.Generator, args) -> str:
    """One noisy caption for `digit`: kept true attributes + false ones, shuffled, maybe a guess."""
    attrs = [a for a in ATTRIBUTES[digit] if rng.random() >= args.p_drop]
    false = [a for a in PHRASES if a not in ATTRIBUTES[digit]]
    n_false = min(len(false), int(rng.poisson(args.false_rate)))
    attrs += [false[i] for i in rng.choice(len(false), n_false, replace=False)]
    attrs = [attrs[i] for i in rng.permutation(len(attrs))]
    phrases = [PHRASES[a][rng.integers(min(args.paraphrases, len(PHRASES[a])))] for a in attrs]
    if phrases:
        body = f"{OPENERS[rng.integers(len(OPENERS))]} " + (
            phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1])
    else:
        body = EMPTY[rng.integers(len(EMPTY))]
    if rng.random() < args.p_guess:
        options = CONFUSABLE[digit]
        guess = digit if rng.random() < args.p_guess_right else options[rng.integers(len(options))]
        word = NAMES[guess] if rng.random() < 0.5 else str(guess)
        body += "; " + HEDGES[rng.integers(len(HEDGES))].format(word)
    return body


def text_only_accuracy(rows: list[dict]) -> dict[str, float]:
    """Logistic regression on word uni+bigrams, fitted on every train caption with its label;
    its accuracy on val (to tune the noise on) and on test (to report)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    train = [r for r in rows if r["split"] == "train"]
    vec = CountVectorizer(ngram_range=(1, 2), token_pattern=r"[a-z0-9]+")
    x = vec.fit_transform([r["caption"] for r in train])
    model = LogisticRegression(max_iter=2000).fit(x, [r["label"] for r in train])
    acc = {}
    for split in ("val", "test"):
        held = [r for r in rows if r["split"] == split]
        pred = model.predict(vec.transform([r["caption"] for r in held]))
        acc[split] = float(np.mean(pred == np.array([r["label"] for r in held])))
    return acc


def _false_rate(text: str) -> float:
    value = non_negative(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 100], got {value:g}")
    return value


@one_line_errors
def main(argv: list[str] | None = None) -> Path:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", type=Path, default=REPO.parent / "shared/data/mnist",
                    help="folder with t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-per-class", type=at_least(1), default=300)
    ap.add_argument("--val-per-class", type=at_least(1), default=50)
    ap.add_argument("--test-per-class", type=at_least(1), default=100)
    ap.add_argument("--p-drop", type=probability, default=0.4, help="chance a true attribute is left out")
    # at most every false attribute there is goes into a caption: 1e9 was recorded, 1e30 a numpy traceback (59th B18)
    ap.add_argument("--false-rate", type=_false_rate, default=1.0, help="mean number of false attributes per caption (0..100)")
    ap.add_argument("--p-guess", type=probability, default=0.35, help="chance the caption ends in a hedged guess")
    ap.add_argument("--p-guess-right", type=probability, default=0.5, help="chance the guess names the true digit")
    ap.add_argument("--paraphrases", type=at_least(1), default=2, help="paraphrases used per attribute (at most)")
    ap.add_argument("--no-check", action="store_true", help="skip the text-only accuracy check")
    args = ap.parse_args(argv)

    out = args.out.expanduser().resolve()
    if out == REPO or REPO in out.parents:
        fail(f"--out {out} lies inside the repository; write data outside it")
    from distill_export.output_paths import check_tool_output

    check_tool_output(out, folder=True, remove_on_failure=True)  # new or empty, outside any run: nothing of the user's overwritten
    t0 = time.perf_counter()
    images = read_idx(find(args.mnist, "t10k-images-idx3-ubyte"))  # (10000, 28, 28) uint8
    labels = read_idx(find(args.mnist, "t10k-labels-idx1-ubyte"))  # (10000,)
    rng = np.random.default_rng(args.seed)
    counts = {"train": args.train_per_class, "val": args.val_per_class, "test": args.test_per_class}
    need = sum(counts.values())
    picks = []  # (split, mnist index)
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        if len(idx) < need:
            fail(f"digit {digit} has {len(idx)} images, fewer than the {need} asked for")
        start = 0
        for split, n in counts.items():
            picks += [(split, int(i)) for i in idx[start : start + n]]
            start += n
    picks = [picks[i] for i in rng.permutation(len(picks))]  # rows in random order

    from PIL import Image

    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (split, i) in enumerate(picks):
        name = f"images/{n:05d}.png"
        Image.fromarray(images[i]).save(out / name)
        rows.append({"image": name, "caption": caption(int(labels[i]), rng, args), "label": int(labels[i]),
                     "split": split, "mnist_index": i})
    tmp = out / "manifest.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption", "label", "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "manifest.csv")  # nothing half-written under the final name
    acc = None if args.no_check else text_only_accuracy(rows)
    info = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": {s: sum(r["split"] == s for r in rows) for s in counts},
            "text_only_accuracy": acc, "seconds": round(time.perf_counter() - t0, 1),
            "examples": [{"label": r["label"], "caption": r["caption"]} for r in rows[:10]]}
    (out / "captions.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {len(rows)} rows to {out / 'manifest.csv'} in {info['seconds']} s"
          + (f"; text-only accuracy {100 * acc['val']:.1f}% val, {100 * acc['test']:.1f}% test (logistic regression, "
             "all train labels)" if acc is not None else ""))
    return out / "manifest.csv"


if __name__ == "__main__":
    main()
