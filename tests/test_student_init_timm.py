"""--student-init with timm-named weights (issue 10 part 5): timm's mobilenetv3_small_100 loads
into mobilenet_v3_small and the student then computes what the file's network computes.

Without timm, the file is built from torchvision's model renamed to timm's names by the rule
below (timm_names), a rule the timm tests check against timm itself. With timm (pip install
timm, or the [timm] extra), the file is timm's own model and our student's outputs are
compared with timm's."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from distill_export.errors import CheckpointError
from distill_export.nets.student_init import init_student
from distill_export.nets.students import create_student

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm is not installed (pip install timm): no timm model to compare with")
TIMM_STAGES = (1, 2, 3, 2, 3, 1)  # blocks per stage in timm's mobilenetv3_small_100 (torchvision's features.1-12)
# Outputs are compared at 5e-5 of their largest magnitude: the same fp32 network reached by
# another path (a 1x1 conv against a Linear, a BN weight rescaled for eps) differs by ~5e-6 of
# it after ~50 layers; an eps left unfolded is off by ~0.4 of it, a swapped tensor by more.
REL_TOL = 5e-5


def timm_names(tv: nn.Module) -> dict[str, str]:
    """{torchvision key: timm key} for mobilenet_v3_small, from each module's role: the stem,
    per block [1x1 expand], depthwise, [squeeze-excite], 1x1 project, then the last conv, the
    576->1024 head layer (timm: conv_head, a 1x1 conv) and the classifier."""
    where = [(s, b) for s, n in enumerate(TIMM_STAGES) for b in range(n)]  # features.1 ... features.12
    names = {"features.0.0": "conv_stem", "features.0.1": "bn1", "features.12.0": "blocks.5.0.conv",
             "features.12.1": "blocks.5.0.bn1", "classifier.0": "conv_head", "classifier.3": "classifier"}
    for i, (s, b) in enumerate(where[:-1], start=1):
        layers = list(tv.features[i].block)
        convs = [j for j, layer in enumerate(layers) if not isinstance(layer, SqueezeExcitation)]
        expands = layers[0][0].groups == 1  # the first block starts with its depthwise conv
        roles = [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")] if expands else \
            [("conv_dw", "bn1"), ("conv_pw", "bn2")]
        for j, (conv, bn) in zip(convs, roles, strict=True):
            names[f"features.{i}.block.{j}.0"] = f"blocks.{s}.{b}.{conv}"
            names[f"features.{i}.block.{j}.1"] = f"blocks.{s}.{b}.{bn}"
        for j, layer in enumerate(layers):
            if isinstance(layer, SqueezeExcitation):
                names[f"features.{i}.block.{j}.fc1"] = f"blocks.{s}.{b}.se.conv_reduce"
                names[f"features.{i}.block.{j}.fc2"] = f"blocks.{s}.{b}.se.conv_expand"
    return {k: f"{names[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}" for k in tv.state_dict()}


def calibrated(model: nn.Module, seed: int) -> nn.Module:
    """Running statistics from one training-mode batch, then per channel var * c and weight *
    sqrt(c) (c in [0.001, 1]: the same function, small variances where eps matters), noisy
    weights and biases, and num_batches_tracked 7: every BN tensor distinct, so a tensor loaded
    into the wrong place shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # a cumulative average: this one batch's statistics
        bn.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 96, 96, generator=g))
        for bn in bns:
            c = torch.empty_like(bn.running_var).uniform_(0.001, 1, generator=g)
            bn.running_var.mul_(c)
            bn.weight.mul_(c.sqrt() * torch.empty_like(c).uniform_(0.8, 1.2, generator=g))
            bn.bias.add_(0.1 * torch.randn(c.shape, generator=g))
            bn.num_batches_tracked.fill_(7)
    return model.eval()


def torchvision_as_timm(seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """torchvision's mobilenet_v3_small with timm's BN eps (1e-5), and its state_dict under timm's names."""
    import torchvision.models as tvm

    torch.manual_seed(seed)
    ref = tvm.mobilenet_v3_small(weights=None)  # 1000 classes
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-5
    calibrated(ref, seed)
    names = timm_names(ref)
    state = {names[k]: v.clone() for k, v in ref.state_dict().items()}
    state["conv_head.weight"] = state["conv_head.weight"][:, :, None, None]  # timm's is a 1x1 Conv2d
    return ref, state


def penultimate(ref: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision mobilenet_v3_small's (B, 1024) features before the classifier."""
    return ref.classifier[:-1](torch.flatten(ref.avgpool(ref.features(x)), 1))


def assert_same_outputs(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=REL_TOL * want.abs().max().item())


def test_timm_named_weights_load_and_compute_what_they_computed(tmp_path, capsys):
    ref, state = torchvision_as_timm()
    save_file(state, tmp_path / "mnv3s.safetensors")  # safetensors reads back sorted by name
    torch.save(dict(reversed(state.items())), tmp_path / "mnv3s.pth")  # any order
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        want_logits, want_features = ref(x), penultimate(ref, x)
        for file in ("mnv3s.safetensors", "mnv3s.pth"):
            net = init_student(create_student("mobilenet_v3_small", 1000, 3, 96), tmp_path / file,
                               "mobilenet_v3_small").eval()
            assert_same_outputs(net(x), want_logits)
        assert "head is replaced" not in capsys.readouterr().err
        ten = init_student(create_student("mobilenet_v3_small", 10, 3, 96), tmp_path / "mnv3s.pth",
                           "mobilenet_v3_small").eval()
        assert "1000-class head and the data has 10 classes: the head is replaced" in capsys.readouterr().err
        assert_same_outputs(ten.forward_features(x)[0], want_features)
    bns = {k: v for k, v in ten.state_dict().items() if k.endswith("num_batches_tracked")}
    assert len(bns) == 34 and all(int(v) == 7 for v in bns.values())  # BN counters come too


@pytest.mark.parametrize("change, why", [
    ("missing", "its 'blocks.2.1.bn2.num_batches_tracked' () meets the student's 'backbone.0.5.block.1.1.running_var'"),
    ("swapped", "its 'blocks.0.0.conv_dw.weight' (16, 16, 1, 1) meets the student's 'backbone.0.1.block.0.0.weight'"),
    ("unknown", "'blocks.0.0.se.conv_mid.weight' is not a tensor name of timm's MobileNetV3"),
    ("no_bias", "it has 243 tensors in timm's MobileNetV3 names, the student 244"),
])
def test_timm_names_that_do_not_line_up_are_one_line_errors(tmp_path, change, why):
    _, state = torchvision_as_timm()
    if change == "missing":
        del state["blocks.2.1.bn2.running_var"]
    elif change == "swapped":  # block 0's depthwise and pointwise weights under each other's names
        state["blocks.0.0.conv_dw.weight"], state["blocks.0.0.conv_pw.weight"] = \
            state["blocks.0.0.conv_pw.weight"], state["blocks.0.0.conv_dw.weight"]
    elif change == "unknown":
        state["blocks.0.0.se.conv_mid.weight"] = state.pop("blocks.0.0.se.conv_reduce.weight")
    else:  # every tensor lines up with the student's, but the last is missing
        del state["classifier.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        init_student(create_student("mobilenet_v3_small", 10, 3, 96), tmp_path / "bad.pth", "mobilenet_v3_small")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"--student-init {tmp_path / 'bad.pth'} does not fit student "
                                              "mobilenet_v3_small: ") and why in msg, msg


def test_timm_mobilenet_weights_do_not_fit_other_students(tmp_path):
    _, state = torchvision_as_timm()
    torch.save(state, tmp_path / "mnv3s.pth")
    for name, channels in (("shufflenet_v2_x0_5", 3), ("resnet18", 3)):  # shufflenet: timm has none
        with pytest.raises(CheckpointError, match=f"does not fit student {name}: 2[0-9]+ of its keys are not in "
                                                  "the architecture"):
            init_student(create_student(name, 10, channels, 96), tmp_path / "mnv3s.pth", name)
    with pytest.raises(CheckpointError, match=r"its 'conv_stem.weight' \(16, 3, 3, 3\) meets the student's "
                                              r"'backbone.0.0.0.weight' \(16, 1, 3, 3\)"):
        init_student(create_student("mobilenet_v3_small", 10, 1, 96), tmp_path / "mnv3s.pth", "mobilenet_v3_small")


@needs_timm
def test_timm_mobilenetv3_small_100_loads_and_our_student_computes_timms_outputs(tmp_path):
    import timm

    torch.manual_seed(0)
    model = calibrated(timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=1000), seed=1)
    _, renamed = torchvision_as_timm()  # the no-timm tests' file has timm's names and shapes
    assert {k: v.shape for k, v in renamed.items()} == {k: v.shape for k, v in model.state_dict().items()}
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "timm.safetensors")
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        want_logits = model(x)
        want_features = model.forward_head(model.forward_features(x), pre_logits=True)  # (3, 1024)
        for file in ("timm.pth", "timm.safetensors"):
            net = init_student(create_student("mobilenet_v3_small", 1000, 3, 96), tmp_path / file,
                               "mobilenet_v3_small").eval()
            assert_same_outputs(net(x), want_logits)
        ten = init_student(create_student("mobilenet_v3_small", 10, 3, 96), tmp_path / "timm.pth",
                           "mobilenet_v3_small").eval()
        assert_same_outputs(ten.forward_features(x)[0], want_features)


@needs_timm
def test_timm_resnet18_loads_by_torchvision_names_and_computes_timms_outputs(tmp_path):
    import timm

    torch.manual_seed(0)
    model = calibrated(timm.create_model("resnet18", pretrained=False, num_classes=1000), seed=2)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    net = init_student(create_student("resnet18", 1000, 3, 96), tmp_path / "r18.pth", "resnet18").eval()
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        assert_same_outputs(net(x), model(x))
