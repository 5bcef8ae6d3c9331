"""Image students, registered by name and built by one factory (timm-style).

Every student returns logits from ``forward`` (what ONNX exports) and
``(features, logits)`` from ``forward_features`` (what feature distillation needs).
Each registered student serves one task (nets/student_registry.py): the classifiers here, the
detectors of nets/detectors.py (raw CenterNet heads at stride 4, spatial features);
``student_task(name)`` says which, ``check_student_task(name, task)`` refuses a mismatch.

The stem depends on the input size. Below STOCK_STEM_MIN_SIZE px (the demo's 28x28 digits)
torchvision models get a stem without its early stride (and shufflenet/resnet lose the
maxpool), so a small image is not pooled away. From STOCK_STEM_MIN_SIZE px up they keep
torchvision's stock strided stem, so ImageNet-style weights (``--student-init``, see
nets/student_init.py) fit; only the stem's input channels follow the data (3 for RGB).
Each torchvision student remembers which of its tensors each torchvision state_dict key names
(``SplitNet.torchvision_keys``), which is how such a file is loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from distill_export.errors import ConfigError
from distill_export.nets import detectors  # noqa: F401  (registers the detection students)
from distill_export.nets.layers import bn_momentum as _bn_momentum
from distill_export.nets.layers import conv_bn
from distill_export.nets.layers import shared_keys as _shared_keys
from distill_export.nets.layers import stem_conv as _stem_conv
from distill_export.nets.student_registry import _REGISTRY, _TASKS, register_student

STOCK_STEM_MIN_SIZE = 64  # px, the input's smaller side: from here up, torchvision's own strided stem


def student_names(task: str | None = None) -> list[str]:
    """Every registered student, or those serving `task` (classification, detection)."""
    return sorted(n for n in _REGISTRY if task is None or _TASKS[n] == task)


def student_task(name: str) -> str | None:
    """The task a registry student's output serves; None for a package.module:factory student
    (its output is whatever the factory returns; the preflight forward pass checks its shape)."""
    if ":" in name:
        return None
    check_student_name(name)
    return _TASKS[name]


def check_student_task(name: str, task: str) -> None:
    """A registry student built for another task is a one-line ConfigError naming the fitting ones."""
    own = student_task(name)
    if own is not None and own != task:
        fitting = ", ".join(student_names(task)) or "none registered"
        raise ConfigError(f"student {name!r} is a {own} student; task {task} needs one of: {fitting} "
                          "(or package.module:factory)")


def create_student(name: str, num_classes: int, in_channels: int = 1, input_size: int = 0) -> "SplitNet":
    """input_size: the smaller side of the input in px (0: unknown, treated as small)."""
    if ":" in name:  # "package.module:factory", a user's own student (nets/external.py)
        from distill_export.nets.external import create_factory_student

        return create_factory_student(name, num_classes, in_channels)
    check_student_name(name)
    small = input_size < STOCK_STEM_MIN_SIZE
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, small_input=small)


def check_student_name(name: str) -> None:
    """A registry name or package.module:factory; anything else is a ConfigError listing the choices."""
    if ":" not in name and name not in _REGISTRY:
        raise ConfigError(f"unknown student {name!r} (choices: {', '.join(student_names())}, or package.module:factory)")


class SplitNet(nn.Module):
    """backbone: (B, C, H, W) -> (B, D) penultimate features; head: (B, D) -> (B, classes)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, source: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = head.in_features
        # {key in the source model's state_dict: key in ours}, for the tensors the two share
        # (source: the torchvision model whose parts make this net).
        self.torchvision_keys: dict[str, str] = _shared_keys(source, self) if source is not None else {}

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return feats, self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _three_block_cnn(num_classes: int, in_channels: int, width: int) -> SplitNet:
    """conv-bn-relu blocks of width, 2*width, 4*width channels, two 2x2 max-pools, global average."""
    backbone = nn.Sequential(
        conv_bn(in_channels, width),
        nn.MaxPool2d(2),
        conv_bn(width, 2 * width),
        nn.MaxPool2d(2),
        conv_bn(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return SplitNet(backbone, nn.Linear(4 * width, num_classes))


@register_student
def tiny_cnn(num_classes: int, in_channels: int = 1, small_input: bool = True) -> SplitNet:
    """Three conv blocks (8-16-32 channels), ~6K parameters: the demo's default student."""
    return _three_block_cnn(num_classes, in_channels, 8)


@register_student
def small_cnn(num_classes: int, in_channels: int = 1, small_input: bool = True) -> SplitNet:
    """tiny_cnn twice as wide (16-32-64 channels), ~24K parameters, ~4x its MACs: the next step
    up when tiny_cnn cannot fit what the teacher knows (the report's fit check)."""
    return _three_block_cnn(num_classes, in_channels, 16)


@register_student
def mobilenet_v3_small(num_classes: int, in_channels: int = 1, small_input: bool = True) -> SplitNet:
    from torchvision.models import mobilenet_v3_small as tv

    net = _bn_momentum(tv(weights=None, num_classes=num_classes))
    net.features[0][0] = _stem_conv(net.features[0][0], in_channels, small_input)
    head = net.classifier[-1]
    backbone = nn.Sequential(net.features, net.avgpool, nn.Flatten(), *net.classifier[:-1])
    return SplitNet(backbone, head, source=net)


@register_student
def shufflenet_v2_x0_5(num_classes: int, in_channels: int = 1, small_input: bool = True) -> SplitNet:
    from torchvision.models import shufflenet_v2_x0_5 as tv

    net = tv(weights=None, num_classes=num_classes)
    net.conv1[0] = _stem_conv(net.conv1[0], in_channels, small_input)
    stem = [net.conv1] if small_input else [net.conv1, net.maxpool]  # a 28x28 input cannot afford the maxpool
    backbone = nn.Sequential(
        *stem, net.stage2, net.stage3, net.stage4, net.conv5, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return SplitNet(backbone, net.fc, source=net)


@register_student
def resnet18(num_classes: int, in_channels: int = 1, small_input: bool = True) -> SplitNet:
    from torchvision.models import resnet18 as tv

    net = tv(weights=None, num_classes=num_classes)
    if small_input:  # a 3x3 stride-1 stem and no maxpool: 28x28 keeps its resolution into layer1
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    else:
        net.conv1 = _stem_conv(net.conv1, in_channels, small_input)
    stem = [net.conv1, net.bn1, net.relu] + ([] if small_input else [net.maxpool])
    backbone = nn.Sequential(
        *stem, net.layer1, net.layer2, net.layer3, net.layer4, net.avgpool, nn.Flatten(),
    )
    return SplitNet(backbone, net.fc, source=net)
