"""Image students, registered by name and built by one factory (timm-style).

Every student returns logits from ``forward`` (what ONNX exports) and
``(features, logits)`` from ``forward_features`` (what feature distillation needs).
torchvision models are adapted to small single-channel inputs: a 1-channel stem
without its early stride, so a 28x28 digit is not pooled away.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from distill_export.errors import ConfigError

_REGISTRY: dict[str, Callable[..., "SplitNet"]] = {}


def register_student(fn: Callable[..., "SplitNet"]) -> Callable[..., "SplitNet"]:
    _REGISTRY[fn.__name__] = fn
    return fn


def student_names() -> list[str]:
    return sorted(_REGISTRY)


def create_student(name: str, num_classes: int, in_channels: int = 1) -> "SplitNet":
    if ":" in name:  # "package.module:factory", a user's own student (nets/external.py)
        from distill_export.nets.external import create_factory_student

        return create_factory_student(name, num_classes, in_channels)
    check_student_name(name)
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels)


def check_student_name(name: str) -> None:
    """A registry name or package.module:factory; anything else is a ConfigError listing the choices."""
    if ":" not in name and name not in _REGISTRY:
        raise ConfigError(f"unknown student {name!r} (choices: {', '.join(student_names())}, or package.module:factory)")


class SplitNet(nn.Module):
    """backbone: (B, C, H, W) -> (B, D) penultimate features; head: (B, D) -> (B, classes)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = head.in_features

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return feats, self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@register_student
def tiny_cnn(num_classes: int, in_channels: int = 1) -> SplitNet:
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


def _first_conv_to(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same stem conv with `in_channels` inputs and stride 1 (small inputs)."""
    return nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, stride=1,
        padding=conv.padding, bias=conv.bias is not None,
    )


@register_student
def mobilenet_v3_small(num_classes: int, in_channels: int = 1) -> SplitNet:
    from torchvision.models import mobilenet_v3_small as tv

    net = _bn_momentum(tv(weights=None, num_classes=num_classes))
    net.features[0][0] = _first_conv_to(net.features[0][0], in_channels)
    head = net.classifier[-1]
    backbone = nn.Sequential(net.features, net.avgpool, nn.Flatten(), *net.classifier[:-1])
    return SplitNet(backbone, head)


@register_student
def shufflenet_v2_x0_5(num_classes: int, in_channels: int = 1) -> SplitNet:
    from torchvision.models import shufflenet_v2_x0_5 as tv

    net = tv(weights=None, num_classes=num_classes)
    net.conv1[0] = _first_conv_to(net.conv1[0], in_channels)
    backbone = nn.Sequential(
        net.conv1, net.stage2, net.stage3, net.stage4, net.conv5,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # maxpool dropped: a 28x28 input cannot afford it
    return SplitNet(backbone, net.fc)


@register_student
def resnet18(num_classes: int, in_channels: int = 1) -> SplitNet:
    from torchvision.models import resnet18 as tv

    net = tv(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    backbone = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4,
        net.avgpool, nn.Flatten(),
    )
    return SplitNet(backbone, net.fc)
