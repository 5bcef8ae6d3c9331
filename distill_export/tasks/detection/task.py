"""Object detection as a Task: CenterNet heads (nets/centernet.py), mAP50 on validation, COCO
mAP (faster-coco-eval) on test, a paired bootstrap over images for the gain, and parity gates on
matched detections.

Two shapes of outputs reach the hooks: the raw heads (N, C+4, h, w) the trainer and the
PyTorch models produce, and the decoded detections {"boxes" (N, K, 4), "scores" (N, K),
"classes" (N, K)} the exported graph produces (its decode is inside). Every evaluation hook
takes either; raw heads are decoded with the same ``centernet.decode`` the graph ends with.
Torch is imported only to decode raw heads or train, so `validate` on an edge box (decoded
outputs) needs numpy alone.
"""

from __future__ import annotations

import numpy as np

from distill_export.errors import ConfigError
from distill_export.tasks.base import Gate, Task, register_task
from distill_export.tasks.detection.matching import Detections, fast_map, labeled_images
from distill_export.tasks.detection.metrics import detection_metrics
from distill_export.tasks.detection.parity import extra_detections, match_detections
from distill_export.tasks.detection.significance import compare as paired_compare

_DECODE_ROWS = 512  # images per decode call


def _is_raw(outputs) -> bool:
    return not isinstance(outputs, (dict, tuple, list, Detections)) and np.ndim(outputs) == 4


def _numpy(x) -> np.ndarray:
    """Targets as numpy, from numpy or a torch tensor (on any device)."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _num_classes(*arrays) -> int:
    """C when only decoded detections and targets are at hand: the largest class id + 1."""
    top = [int(np.max(a)) for a in arrays if a is not None and np.size(a)]
    return max([0, *top]) + 1


@register_task
class DetectionTask(Task):
    name = "detection"
    score_name = "mAP50"
    output_names = ("boxes", "scores", "classes")  # the exported graph ends with the decode
    metric_keys = ("map50", "map50_95")
    gates = (  # the limits live in ValidateConfig under these names (--gate NAME=VALUE)
        Gate("fp32_map50_delta", "fp32", "map50_delta", "max", 0.001),
        Gate("fp32_matched", "fp32", "matched_detections", "min", 0.99),
        Gate("fp16_map50_delta", "fp16", "map50_delta", "max", 0.005),
        Gate("fp16_matched", "fp16", "matched_detections", "min", 0.99),
        Gate("int8_map50_delta", "int8", "map50_delta", "max", 0.02),
        Gate("int8_matched", "int8", "matched_detections", "min", 0.95),
    )
    parity_better = {"matched_detections": "higher", "matched_count": "higher", "reference_count": "same",
                     "extra_count": "lower", "max_score_diff": "lower", "max_box_diff_px": "lower", "map50": "higher",
                     "reference_map50": "same", "map50_delta": "lower"}

    def report_view(self):
        from distill_export.tasks.detection import report

        return report  # a module with the view's names: mAP tables, the bootstrap verdict, ...

    # ----- data and heads ---------------------------------------------------------------
    def targets(self):
        from distill_export.data.boxes import BoxTargets

        return BoxTargets()

    def output_size(self, data) -> int:
        return len(data.target_names) + 4  # C heatmaps, box w h, centre offset x y

    teacher_fusions = ("late", "early")

    def check_config(self, config) -> None:
        """Detection trains on boxes: no image shifts (the boxes would not follow), one round
        (later rounds fuse classifiers), a detector student (nets/detectors.py)."""
        super().check_config(config)
        if config.distill.augment != "none":
            raise ConfigError(f"distill.augment={config.distill.augment} moves the image but not its boxes; "
                              "task detection needs distill.augment=none")
        if config.distill.mix != "none":
            raise ConfigError(f"distill.mix={config.distill.mix} blends images but not their box lists; "
                              "task detection needs distill.mix=none")
        if config.distill.rounds != 1:
            raise ConfigError(f"distill.rounds={config.distill.rounds}: later rounds fuse classifiers; "
                              "task detection needs distill.rounds=1")

    def build_teacher(self, config, data, modalities=None):
        """CenterNet heads over the clip (teacher.fusion late | early), or over the student's
        frame alone (the self-training control): nets/video_teacher.py."""
        from distill_export.nets.video_teacher import build_detection_teacher

        return build_detection_teacher(config, data, modalities)

    def export_meta(self, data) -> dict:
        from distill_export.nets.centernet import MAX_DETECTIONS, OUTPUT_STRIDE

        return {"class_names": list(data.target_names), "max_detections": MAX_DETECTIONS, "box_format": "xyxy",
                "output_stride": OUTPUT_STRIDE}

    def export_tail(self, output_size: int):
        """The decode the exported graph ends with: raw heads -> boxes, scores, classes."""
        from distill_export.tasks.detection.graph import DecodeTail

        return DecodeTail(output_size - 4)

    def decode(self, outputs):
        return self.decode_outputs(outputs)

    def decode_outputs(self, outputs) -> dict[str, np.ndarray]:
        """Raw heads (N, C+4, h, w), numpy or torch -> {"boxes", "scores", "classes"} numpy, through
        the decode the exported graph ends with (so a reference matches its export)."""
        import torch

        from distill_export.nets.centernet import OUTPUT_STRIDE, decode

        out = torch.as_tensor(outputs)
        parts = []
        with torch.no_grad():
            for i in range(0, len(out), _DECODE_ROWS):
                chunk = out[i : i + _DECODE_ROWS].float()
                parts.append(decode(chunk, chunk.shape[1] - 4, OUTPUT_STRIDE))
        if not parts:
            from distill_export.nets.centernet import MAX_DETECTIONS

            k = MAX_DETECTIONS
            return {"boxes": np.zeros((0, k, 4), np.float32), "scores": np.zeros((0, k), np.float32),
                    "classes": np.zeros((0, k), np.int64)}
        return {name: torch.cat([p[j] for p in parts]).cpu().numpy()
                for j, name in enumerate(self.output_names)}

    def draw_examples(self, images, outputs, targets, data, path) -> bool:
        """Test frames with the ground truth and each model's boxes (tasks/detection/draw.py)."""
        from distill_export.tasks.detection.draw import draw_detections

        panels = {name: self.decode_outputs(raw) for name, raw in outputs.items()}
        names = [str(n) for n in data.target_names] if data is not None else None
        return draw_detections(images, panels, targets, path, class_names=names) is not None

    def _detections(self, outputs) -> tuple[Detections, int | None]:
        """Detections of raw heads or decoded outputs, and C when the heads say it."""
        if _is_raw(outputs):
            return Detections.of(self.decode_outputs(outputs)), int(np.shape(outputs)[1]) - 4
        return Detections.of(outputs), None

    # ----- training ---------------------------------------------------------------------
    def supervised_loss(self, outputs, targets):
        from distill_export.nets.centernet import OUTPUT_STRIDE, detection_loss

        return detection_loss(outputs, targets, outputs.shape[1] - 4, OUTPUT_STRIDE)  # (B, C+4, h, w), (B, M, 5)

    def score(self, outputs, targets) -> float:
        """Validation mAP50 (COCO's 101-point AP at IoU 0.5, computed in numpy) of the labeled images."""
        dets, C = self._detections(outputs)
        targets = _numpy(targets)
        return fast_map(dets, targets, C or _num_classes(dets.classes, targets[..., 0]))

    # ----- evaluation -------------------------------------------------------------------
    def evaluate(self, outputs, targets, data=None) -> dict:
        """COCO mAP50 and mAP50-95 with faster-coco-eval, overall and per class."""
        dets, C = self._detections(outputs)
        targets = _numpy(targets)
        if data is not None:
            names = [str(n) for n in data.target_names]
        else:
            names = [str(c) for c in range(C or _num_classes(dets.classes, targets[..., 0]))]
        return detection_metrics(dets, targets, names)

    def compare(self, outputs_a, outputs_b, targets, seed: int = 0) -> dict:
        """Paired bootstrap over images of the mAP50 gain of A over B (tasks/detection/significance.py)."""
        (dets_a, c_a), (dets_b, c_b) = self._detections(outputs_a), self._detections(outputs_b)
        targets = _numpy(targets)
        C = c_a or c_b or _num_classes(dets_a.classes, dets_b.classes, targets[..., 0])
        return paired_compare(dets_a, dets_b, targets, C, seed=seed)

    # ----- parity -----------------------------------------------------------------------
    def parity_metrics(self, candidate, reference, targets) -> dict:
        """An export's decoded detections vs the PyTorch student's, both {"boxes", "scores",
        "classes"}: matched detections (parity.py), and |ΔmAP50| against the labeled targets
        (0 when there are none)."""
        cand, ref = self._detections(candidate)[0], self._detections(reference)[0]
        m = match_detections(cand, ref)
        # and the other way: the candidate's confident detections the reference has not (a heatmap
        # bias that turned every background peak confident passed at 0 of 0: thirtieth audit A1)
        extra = extra_detections(cand, ref)
        targets = _numpy(targets)
        labeled = targets.ndim == 3 and len(targets) and labeled_images(targets).any()
        if labeled:
            C = _num_classes(cand.classes, ref.classes, targets[..., 0])
            cand_map, ref_map = fast_map(cand, targets, C), fast_map(ref, targets, C)
        else:
            cand_map = ref_map = 0.0
        return {
            # the share of confident detections, on either side, that have their partner on the other
            "matched_detections": m["matched"] / (m["reference_count"] + extra) if m["reference_count"] + extra else 1.0,
            "matched_count": m["matched"],
            "reference_count": m["reference_count"],
            "extra_count": extra,
            "max_score_diff": m["max_score_diff"],
            "max_box_diff_px": m["max_box_diff_px"],
            "map50": cand_map,
            "reference_map50": ref_map,
            "map50_delta": abs(cand_map - ref_map),
        }
