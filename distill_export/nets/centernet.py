"""CenterNet-style heads ("Objects as Points", Zhou et al. 2019): the layout every detection
model, term and export in distill-export shares. It lives in nets/ so that the detection task
(tasks/detection), its distillation terms (methods/) and the detectors all import it from below.

A detector's raw output is one map, (B, C + 4, h, w), at output stride ``stride = H / h``:

- channels ``[0, C)``: per-class centre heatmap logits (sigmoid -> probability of a centre);
- ``[C, C + 2)``: box width and height, in feature-map cells;
- ``[C + 2, C + 4)``: the centre's sub-cell offset (x, y), in cells, in [0, 1).

Box targets are (B, M, 5) float rows ``[class, x1, y1, x2, y2]`` in input pixels. A row with
class -1 is padding (a labeled image with fewer than M boxes); an unlabeled image's rows are all
IGNORE_INDEX (-100), which is how ``labeled_rows`` finds it.

``decode`` is what the exported graph ends with: 3x3 max-pool peaks and one TopK over C*h*w,
no NMS, so it needs only standard ONNX operators (Sigmoid, MaxPool, Equal, TopK, GatherElements)
and always returns K detections. It runs in float32 whatever the heads' dtype: an FP16 export
keeps it there (peak ties and box arithmetic in half precision move boxes by pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BOX_PAD = -1.0  # class of a padding box row
SIZE_WEIGHT = 0.1  # CenterNet's weights: focal + 0.1 * size L1 + 1 * offset L1
OFFSET_WEIGHT = 1.0
TTF_ALPHA = 0.54  # Gaussian sigma = alpha * side / 6 (TTFNet): elliptical, follows the box
OUTPUT_STRIDE = 4  # every detector's heads are at 1/4 of the input resolution
MAX_DETECTIONS = 20  # K: detections per image out of decode (and out of the exported graph)


def head_channels(num_classes: int) -> int:
    return num_classes + 4


def split_heads(out: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C+4, h, w) -> heat logits (B, C, h, w), size (B, 2, h, w), offset (B, 2, h, w)."""
    return out[:, :num_classes], out[:, num_classes : num_classes + 2], out[:, num_classes + 2 : num_classes + 4]


def box_rows(targets: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: the real boxes of (B, M, 5) targets (not padding, not an unlabeled image)."""
    return targets[..., 0] >= 0


@torch.no_grad()
def encode(targets: torch.Tensor, num_classes: int, h: int, w: int, stride: float) -> dict[str, torch.Tensor]:
    """Training targets of (B, M, 5) boxes on an (h, w) map:
    heat (B, C, h, w) Gaussian peaks in [0, 1] (exactly 1 at each centre cell);
    index (B, M) int64 flat cell of each centre; size (B, M, 2) and offset (B, M, 2) in cells;
    mask (B, M) float, 1 for a real box."""
    B, M, _ = targets.shape
    device = targets.device
    real = box_rows(targets)
    cls = targets[..., 0].clamp(min=0).long()
    x1, y1, x2, y2 = (targets[..., i] / stride for i in range(1, 5))  # (B, M) in cells
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    bw, bh = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    ix = cx.floor().clamp(0, w - 1)
    iy = cy.floor().clamp(0, h - 1)
    # Gaussians, one per box: (B, M, h, w), then the max per class (overlaps keep the larger).
    sx = (TTF_ALPHA * bw / 6).clamp(min=0.5)
    sy = (TTF_ALPHA * bh / 6).clamp(min=0.5)
    gx = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, 1, w)
    gy = torch.arange(h, device=device, dtype=torch.float32).view(1, 1, h, 1)
    g = torch.exp(-((gx - ix[..., None, None]) ** 2) / (2 * sx[..., None, None] ** 2)
                  - ((gy - iy[..., None, None]) ** 2) / (2 * sy[..., None, None] ** 2))
    g = g * real[..., None, None]
    heat = torch.zeros(B, num_classes, h, w, device=device)
    onehot = F.one_hot(cls, num_classes).float() * real[..., None]  # (B, M, C)
    for c in range(num_classes):  # C is small; a max over boxes of class c
        heat[:, c] = (g * onehot[..., c, None, None]).amax(1) if M else heat[:, c]
    return {
        "heat": heat,
        "index": (iy * w + ix).long(),
        "size": torch.stack([bw, bh], -1),
        "offset": torch.stack([cx - ix, cy - iy], -1),
        "mask": real.float(),
    }


def focal_loss(heat_logits: torch.Tensor, heat: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed (divide by the number of objects).
    heat_logits, heat: (B, C, h, w). Computed from logits (logsigmoid) for stability."""
    logits = heat_logits.float()
    pos = heat.eq(1).float()
    p = torch.sigmoid(logits)
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    pos_loss = (1 - p) ** alpha * log_p * pos
    neg_loss = (1 - heat) ** beta * p**alpha * log_1mp * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum())


def gather_cells(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) maps at (B, M) flat cells -> (B, M, K)."""
    B, K = maps.shape[:2]
    flat = maps.reshape(B, K, -1)
    return flat.gather(2, index[:, None, :].expand(B, K, index.shape[1])).transpose(1, 2)


def detection_loss(out: torch.Tensor, targets: torch.Tensor, num_classes: int, stride: float) -> torch.Tensor:
    """Mean CenterNet loss per object over a batch of labeled images. out (B, C+4, h, w)."""
    heat_logits, size, offset = split_heads(out, num_classes)
    t = encode(targets, num_classes, out.shape[2], out.shape[3], stride)
    n = t["mask"].sum().clamp(min=1)
    mask = t["mask"][..., None]
    size_l1 = (F.l1_loss(gather_cells(size.float(), t["index"]), t["size"], reduction="none") * mask).sum()
    off_l1 = (F.l1_loss(gather_cells(offset.float(), t["index"]), t["offset"], reduction="none") * mask).sum()
    return (focal_loss(heat_logits, t["heat"]) + SIZE_WEIGHT * size_l1 + OFFSET_WEIGHT * off_l1) / n


def decode(out: torch.Tensor, num_classes: int, stride: float, k: int = MAX_DETECTIONS
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C+4, h, w) raw heads -> boxes (B, K, 4) x1 y1 x2 y2 in input px, scores (B, K) in
    [0, 1] best first, classes (B, K) int64. Standard ONNX ops only; float32 throughout."""
    if out.dtype != torch.float32:  # no Cast in an FP32 graph (onnxconverter's FP16 pass mistypes a float->float one)
        out = out.float()
    heat_logits, size, offset = split_heads(out, num_classes)
    B, C, h, w = heat_logits.shape
    heat = torch.sigmoid(heat_logits)
    peaks = torch.where(F.max_pool2d(heat, 3, stride=1, padding=1) == heat, heat, 0.0)  # keep local maxima
    k = min(k, C * h * w)
    scores, idx = torch.topk(peaks.reshape(B, -1), k)  # (B, K) over classes x cells
    # class and cell of each flat index, looked up in constant tables (folded at export): no
    # division in the graph (the exporter lowers an integer floor-division through float Casts)
    flat = torch.arange(C * h * w, device=out.device)
    classes = (flat // (h * w))[idx]
    cell = (flat % (h * w))[idx]
    # Each cell's (x, y) from a constant float table, gathered with the size and offset: no
    # int -> float Cast in the graph (onnxconverter_common's FP16 pass mistypes such Casts).
    ys, xs = torch.meshgrid(torch.arange(h, dtype=out.dtype, device=out.device),
                            torch.arange(w, dtype=out.dtype, device=out.device), indexing="ij")
    grid = torch.stack([xs, ys]).reshape(1, 2, h * w).expand(B, 2, h * w)
    regs = torch.cat([torch.cat([size, offset], 1).reshape(B, 4, h * w), grid], 1)  # (B, 6, h*w)
    picked = regs.gather(2, cell[:, None, :].expand(B, 6, k))  # (B, 6, K)
    bw, bh, ox, oy, cx, cy = picked.unbind(1)
    cx, cy = cx + ox, cy + oy
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * stride
    return boxes, scores, classes


def detections_from_targets(targets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(B, M, 5) targets -> per image (boxes (n, 4), classes (n,)) of its real boxes."""
    real = box_rows(targets)
    return [(t[r, 1:5], t[r, 0].long()) for t, r in zip(targets, real)]


def targets_from_detections(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                            threshold: float, max_boxes: int) -> torch.Tensor:
    """Pseudo-boxes: decoded detections with score >= threshold as (B, max_boxes, 5) targets,
    padded with class -1. boxes (B, K, 4), scores and classes (B, K), scores sorted best first."""
    B, K = scores.shape
    m = min(K, max_boxes)
    keep = scores[:, :m] >= threshold
    rows = torch.cat([classes[:, :m, None].float(), boxes[:, :m]], -1)
    rows = torch.where(keep[..., None], rows, torch.tensor([BOX_PAD, 0, 0, 0, 0], device=rows.device))
    if m < max_boxes:
        pad = torch.tensor([BOX_PAD, 0, 0, 0, 0], device=rows.device).expand(B, max_boxes - m, 5)
        rows = torch.cat([rows, pad], 1)
    return rows
