"""A picture for the report: a few test frames with the ground truth and each model's boxes
(e.g. the student's and the teacher's), one row per frame, one column per source.

Drawn with matplotlib's Agg canvas (no pyplot state, no display), written atomically; None where
matplotlib is not installed (the runtime-only install), as the report's other plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill_export.files import atomic_path
from distill_export.record.format import printable
from distill_export.tasks.detection.matching import Detections, gt_arrays

CELL_INCHES = 2.2  # one frame's panel
DPI = 100
GT_COLOR = "#2ca02c"
PANEL_COLORS = ("#ff7f0e", "#1f77b4", "#d62728", "#9467bd", "#8c564b")


def figure_size_px(n_frames: int, n_panels: int) -> tuple[int, int]:
    """(width, height) of the PNG draw_detections writes: 1 + n_panels columns, n_frames rows."""
    return round((1 + n_panels) * CELL_INCHES * DPI), round(n_frames * CELL_INCHES * DPI)


def _per_image(dets, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A model's detections as [(boxes (K, 4), scores (K,), classes (K,))] per image, from arrays
    over images ({"boxes", "scores", "classes"} or a tuple) or a list already per image."""
    if isinstance(dets, list) and dets and isinstance(dets[0], (tuple, list)) and np.ndim(dets[0][0]) == 2:
        return [tuple(np.asarray(a) for a in d) for d in dets[:n]]
    d = Detections.of(dets)
    return [(d.boxes[i], d.scores[i], d.classes[i]) for i in range(min(n, len(d.scores)))]


def _frames(frames: np.ndarray) -> np.ndarray:
    """(N, H, W) from (N, H, W), (N, 1, H, W) or (N, H, W, 1)."""
    f = np.asarray(frames, np.float32)
    if f.ndim == 4:
        f = f[:, 0] if f.shape[1] == 1 else f[..., 0]
    if f.ndim != 3:
        raise ValueError(f"frames must be (N, H, W) or (N, 1, H, W), got {np.shape(frames)}")
    return f


def _box(ax, box, color: str, text: str, patches) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.2))
    # parse_math off: a class named `$\foo$` was TeX to matplotlib, a traceback (twenty-seventh audit D2)
    ax.text(x1, y1 - 0.5, printable(text), color="white", fontsize=6, va="bottom", clip_on=True, parse_math=False,
            bbox={"facecolor": color, "edgecolor": "none", "pad": 0.5, "alpha": 0.85})


def draw_detections(frames: np.ndarray, panels: dict, targets: np.ndarray | None, path: str | Path,
                    score_threshold: float = 0.3, class_names: list[str] | None = None,
                    max_frames: int = 4) -> Path | None:
    """Draw the first `max_frames` frames: the ground truth (targets (N, M, 5), may be None), then
    one column per entry of `panels` ({"student": detections, "teacher": detections}) with its
    detections scoring >= score_threshold. Returns the PNG's path (None without matplotlib)."""
    try:
        from matplotlib import patches
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    imgs = _frames(frames)[:max_frames]
    n = len(imgs)
    if n == 0:
        raise ValueError("no frames to draw")
    names = list(class_names) if class_names is not None else None
    label = (lambda c: names[c] if names is not None and 0 <= c < len(names) else str(c))
    gt = gt_arrays(np.asarray(targets)[:n]) if targets is not None else None
    columns = [("ground truth", None), *((name, _per_image(d, n)) for name, d in panels.items())]
    width, height = figure_size_px(n, len(panels))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i, img in enumerate(imgs):
        for j, (title, dets) in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(img, cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title if dets is None else f"{title} (score ≥ {score_threshold:g})", fontsize=8)
            if dets is None and gt is not None:
                for box, c in zip(gt[0][i], gt[1][i]):
                    if c >= 0:
                        _box(ax, box, GT_COLOR, label(int(c)), patches)
            elif dets is not None and i < len(dets):
                color = PANEL_COLORS[(j - 1) % len(PANEL_COLORS)]
                for box, s, c in zip(*dets[i]):
                    if s >= score_threshold:
                        _box(ax, box, color, f"{label(int(c))} {float(s):.2f}", patches)
            ax.set_xlim(-0.5, img.shape[1] - 0.5)
            ax.set_ylim(img.shape[0] - 0.5, -0.5)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.25 / (n * CELL_INCHES), wspace=0.04, hspace=0.04)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path
