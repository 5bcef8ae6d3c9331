"""Building blocks the students, the detectors and the teachers' encoders share (below all of
them, so a detector module need not import the classification students)."""

from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def bn_momentum(model: nn.Module, momentum: float = 0.1) -> nn.Module:
    """torchvision's MobileNetV3 uses BatchNorm momentum 0.01, tuned for ImageNet's hundreds of
    thousands of steps. A distillation run takes a few hundred, so the running statistics lag
    the weights and the eval-mode model (what validation picks epochs on, and what ONNX exports)
    is near chance. PyTorch's default 0.1 tracks within a few dozen steps."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    return model


def stem_conv(conv: nn.Conv2d, in_channels: int, small_input: bool) -> nn.Conv2d:
    """The stem conv for this input: torchvision's own when it fits (stock size, 3 channels);
    else the same geometry with `in_channels` inputs, and stride 1 for small inputs."""
    if not small_input and in_channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, stride=1 if small_input else conv.stride,
        padding=conv.padding, bias=conv.bias is not None,
    )


def shared_keys(source: nn.Module, net: nn.Module) -> dict[str, str]:
    """Pair the two state_dicts' keys that hold the very same tensor (the parts are shared objects):
    {key in the source model's state_dict: key in ours}."""
    ours = {id(t): k for k, t in net.state_dict(keep_vars=True).items()}
    return {k: ours[id(t)] for k, t in source.state_dict(keep_vars=True).items() if id(t) in ours}
