"""Detection teachers (teacher.fusion for task detection, DETECTION_TEACHER_FUSIONS): CenterNet
heads (nets/centernet.py) over a clip, or over one frame for the self-training control.

  late:  a shared one-frame encoder on each of the T frames of the clip (B, T, C, H, W); its
         stride-4 maps fused as [centre frame ‖ max over time] (channel concat) -> two convs ->
         heads. The centre frame keeps the still's view (what the student sees); the max over
         time adds what neighbouring frames show (an object occluded on the centre frame).
  early: the T frames stacked as channels (T*C in) into the same encoder -> two convs -> heads.
  frame: the encoder on one image modality (the student's): an image-only teacher of the same
         size, the self-training control.

Every teacher: forward_features(inputs: dict) -> (features (B, 2w, H/4, W/4), heads (B, C+4,
H/4, W/4)); forward(inputs) -> heads; loss(inputs, targets) = CenterNet's focal + L1 on (B, M, 5)
box targets. A dropped clip (``drop=("video",)``, the teacher's view through the student's
modality) is the centre frame repeated T times: a still, which is what the student sees.
"""

from __future__ import annotations

import torch
from torch import nn

from distill_export.errors import ConfigError
from distill_export.nets.centernet import OUTPUT_STRIDE, detection_loss
from distill_export.nets.detectors import CenterNetHeads, TinyBody
from distill_export.nets.layers import conv_bn


def frame_encoder(in_channels: int, width: int) -> TinyBody:
    """(B, Cin, H, W) -> (B, 2w, H/4, W/4): Conv-BN-ReLU to stride 4 plus a stride-8 context stage
    (centernet_tiny's body, `width` wide: centernet_tiny is width 16)."""
    return TinyBody(in_channels, (width, width + width // 2, 2 * width, 3 * width))


class DetectionTeacher(nn.Module):
    """The shared part: `modalities` {name: channels of one frame}, `kinds` {name: the data's kind
    (checked when a user's teacher is loaded)}, `frames` T of a clip. Subclasses say how the
    input becomes the stride-4 map (`encode`)."""

    fusion_name = ""
    task = "detection"

    def __init__(self, modalities: dict[str, int], num_classes: int, width: int = 16, frames: int = 5,
                 kinds: dict[str, str] | None = None, fuse_in: int | None = None, encoder_in: int | None = None):
        super().__init__()
        if len(modalities) != 1:
            raise ConfigError(f"a {self.fusion_name} detection teacher reads one modality, got {sorted(modalities)}")
        self.modality_names = sorted(modalities)
        self.num_classes = num_classes
        self.frames = frames
        (channels,) = modalities.values()
        self.encoder = frame_encoder(encoder_in or channels, width)
        dim = self.encoder.out_dim  # 2w
        self.fuse = nn.Sequential(conv_bn(fuse_in or dim, dim), conv_bn(dim, dim))
        self.heads = CenterNetHeads(dim, num_classes, mid=dim)
        self.feature_dim = dim
        self.output_stride = OUTPUT_STRIDE

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, D_in, H/4, W/4)
        raise NotImplementedError

    def view(self, x: torch.Tensor, dropped: bool) -> torch.Tensor:
        """The input as the teacher sees it; `dropped`: a clip reduced to its centre frame."""
        return x

    def forward_features(self, inputs: dict[str, torch.Tensor], drop: tuple[str, ...] = ()
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        (m,) = self.modality_names
        feats = self.fuse(self.encode(self.view(inputs[m], m in drop)))  # (B, 2w, h, w)
        return feats, self.heads(feats)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_features(inputs)[1]

    def loss(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """CenterNet's loss on (B, M, 5) box targets of labeled rows."""
        return detection_loss(self(inputs), targets, self.num_classes, OUTPUT_STRIDE)


class ClipTeacher(DetectionTeacher):
    """A teacher over a clip (B, T, C, H, W) whose centre frame (T // 2) is the target."""

    def view(self, clip: torch.Tensor, dropped: bool) -> torch.Tensor:
        if clip.dim() != 5:
            raise ValueError(f"a {self.fusion_name} detection teacher takes clips (B, T, C, H, W); "
                             f"got {tuple(clip.shape)}")
        if not dropped:
            return clip
        centre = clip[:, clip.shape[1] // 2 : clip.shape[1] // 2 + 1]
        return centre.expand_as(clip)  # a still: every frame the centre one


class VideoLateTeacher(ClipTeacher):
    """late: shared frame encoder, [centre ‖ max over time] -> two convs -> heads."""

    fusion_name = "late"

    def __init__(self, modalities: dict[str, int], num_classes: int, width: int = 16, frames: int = 5,
                 kinds: dict[str, str] | None = None):
        super().__init__(modalities, num_classes, width, frames, kinds, fuse_in=4 * width)

    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        B, T = clip.shape[:2]
        maps = self.encoder(clip.flatten(0, 1))  # (B*T, 2w, h, w): every frame, one encoder
        maps = maps.reshape(B, T, *maps.shape[1:])
        return torch.cat([maps[:, T // 2], maps.amax(1)], 1)  # (B, 4w, h, w)


class VideoEarlyTeacher(ClipTeacher):
    """early: the T frames stacked as channels (T*C) into the encoder -> two convs -> heads."""

    fusion_name = "early"

    def __init__(self, modalities: dict[str, int], num_classes: int, width: int = 16, frames: int = 5,
                 kinds: dict[str, str] | None = None):
        (channels,) = modalities.values()
        super().__init__(modalities, num_classes, width, frames, kinds, encoder_in=frames * channels)

    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.shape[1] != self.frames:
            raise ValueError(f"the early-fusion teacher was built for clips of {self.frames} frames; "
                             f"got {clip.shape[1]}")
        return self.encoder(clip.flatten(1, 2))  # (B, T*C, H, W) -> (B, 2w, h, w)


class FrameDetectionTeacher(DetectionTeacher):
    """frame: one image (B, C, H, W), the student's modality: the self-training control."""

    fusion_name = "frame"

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)

    def view(self, image: torch.Tensor, dropped: bool) -> torch.Tensor:
        return torch.zeros_like(image) if dropped else image  # no evidence left


# teacher.fusion (task detection) -> (checkpoint arch, class); nets/teacher.py teacher_class reads it.
DETECTION_TEACHER_FUSIONS = {
    "late": ("video_late_teacher", VideoLateTeacher),
    "early": ("video_early_teacher", VideoEarlyTeacher),
    "frame": ("frame_detection_teacher", FrameDetectionTeacher),
}


def detection_teacher_spec(data, width: int, fusion: str, modalities=None, student_modality: str = "image"
                           ) -> tuple[str, dict]:
    """(arch, arch_kwargs) of the detection teacher for `data`. A clip modality (one sample
    (T, C, H, W)) gets the `fusion` teacher (late | early); with `modalities` restricted to the
    student's (the self-training control), or data without clips, the frame teacher on the
    student's modality, of the same width."""
    specs = {m: s for m, s in data.modalities.items() if modalities is None or m in modalities}
    clips = sorted(m for m, s in specs.items() if len(s.shape) == 4)
    if fusion not in DETECTION_TEACHER_FUSIONS:
        raise ConfigError(f"teacher.fusion={fusion} is not a detection teacher (choices: "
                          f"{', '.join(DETECTION_TEACHER_FUSIONS)})")
    if len(clips) > 1:
        raise ConfigError(f"a detection teacher reads one clip modality; the data has {', '.join(clips)}")
    if clips and fusion != "frame":
        m = clips[0]
        frames, channels = int(specs[m].shape[0]), int(specs[m].shape[1])
    else:
        if student_modality not in specs or len(specs[student_modality].shape) != 3:
            raise ConfigError(f"a one-frame detection teacher reads the student's image modality "
                              f"{student_modality!r}; the data gives {', '.join(sorted(specs))}")
        m, fusion = student_modality, "frame"
        frames, channels = 1, int(specs[m].shape[0])
    derived = (getattr(data, "info", None) or {}).get("frame_of") or {}  # image: the centre frame of the clip
    unread = sorted(x for x in specs if x != m and derived.get(x) != m)
    if modalities is None and unread:  # it would train without them, then refuse its own data (twentieth audit B2)
        raise ConfigError(f"column {unread[0]!r} ({specs[unread[0]].kind}) is not read by a detection teacher, "
                          f"which reads {m!r} alone; drop the column")
    arch = DETECTION_TEACHER_FUSIONS[fusion][0]
    return arch, {"modalities": {m: channels}, "num_classes": int(data.num_outputs), "width": int(width),
                  "frames": frames, "kinds": {m: specs[m].kind}}


def build_detection_teacher(config, data, modalities=None) -> tuple[str, dict, DetectionTeacher]:
    """What train_teacher builds for task detection: (arch, arch_kwargs, seeded-fresh teacher),
    from teacher.fusion, teacher.width and data.student_modality."""
    arch, kwargs = detection_teacher_spec(data, config.teacher.width, config.teacher.fusion, modalities,
                                          config.data.student_modality)
    cls = next(c for a, c in DETECTION_TEACHER_FUSIONS.values() if a == arch)
    return arch, kwargs, cls(**kwargs)
