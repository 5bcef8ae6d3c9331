"""Image students, registered by name and built by one factory (timm-style).

Every student returns logits from ``forward`` (what ONNX exports) and
``(features, logits)`` from ``forward_features`` (what feature distillation needs).

The stem depends on the input size. Below STOCK_STEM_MIN_SIZE px (the demo's 28x28 digits)
torchvision models get a stem without its early stride (and shufflenet/resnet lose the
maxpool), so a small image is not pooled away. From STOCK_STEM_MIN_SIZE px up they keep
torchvision's stock strided stem, so ImageNet-style weights (``--student-init``, see
nets/student_init.py) fit; only the stem's input channels follow the data (3 for RGB).
Each torchvision student remembers which of its tensors each torchvision state_dict key names
(``SplitNet.torchvision_keys``), which is how such a file is loaded.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from distill_export.errors import ConfigError

_REGISTRY: dict[str, Callable[..., "SplitNet"]] = {}
STOCK_STEM_MIN_SIZE = 64  # px, the input's smaller side: from here up, torchvision's own strided stem


def register_student(fn: Callable[..., "SplitNet"]) -> Callable[..., "SplitNet"]:
    _REGISTRY[fn.__name__] = fn
    return fn


def student_names() -> list[str]:
    return sorted(_REGISTRY)


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


def _shared_keys(source: nn.Module, net: nn.Module) -> dict[str, str]:
    """Pair the two state_dicts' keys that hold the very same tensor (the parts are shared objects)."""
    ours = {id(t): k for k, t in net.state_dict(keep_vars=True).items()}
    return {k: ours[id(t)] for k, t in source.state_dict(keep_vars=True).items() if id(t) in ours}


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@register_student
def tiny_cnn(num_classes: int, in_channels: int = 1, small_input: bool = True) -> SplitNet:
    """Three conv blocks (8-16-32 channels), ~6K parameters: the demo's default student."""
    backbone = nn.Sequential(
        conv_bn(in_channels, 8),
        nn.MaxPool2d(2),
        conv_bn(8, 16),
        nn.MaxPool2d(2),
        conv_bn(16, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return SplitNet(backbone, nn.Linear(32, num_classes))


def _bn_momentum(model: nn.Module, momentum: float = 0.1) -> nn.Module:
    """torchvision's MobileNetV3 uses BatchNorm momentum 0.01, tuned for ImageNet's hundreds of
    thousands of steps. A distillation run takes a few hundred, so the running statistics lag
    the weights and the eval-mode model (what validation picks epochs on, and what ONNX exports)
    is near chance. PyTorch's default 0.1 tracks within a few dozen steps."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    return model


def _stem_conv(conv: nn.Conv2d, in_channels: int, small_input: bool) -> nn.Conv2d:
    """The stem conv for this input: torchvision's own when it fits (stock size, 3 channels);
    else the same geometry with `in_channels` inputs, and stride 1 for small inputs."""
    if not small_input and in_channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, stride=1 if small_input else conv.stride,
        padding=conv.padding, bias=conv.bias is not None,
    )


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
