"""Fifty-ninth round and after (issue 24): what the sixty-fourth audit left arguable and the
sixty-fifth and later fresh audits found."""

from __future__ import annotations

import numpy as np
import pytest

from distill_export.errors import DataError


def _external_data_model(folder):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [weight])
    model = folder / "m.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model),
                    save_as_external_data=True, location="w.bin", size_threshold=0)
    return model


def test_a64_t3_external_data_linked_from_beside_the_model_names_the_link(tmp_path):
    """A `w.bin` symlink beside the model that leads out of its folder was refused as "outside the
    model's folder", which the user, seeing w.bin beside the model, could not square."""
    from distill_export.runtimes.onnx_runtime import onnx_session

    model = _external_data_model(tmp_path)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.bin"
    (tmp_path / "w.bin").rename(elsewhere)
    (tmp_path / "w.bin").symlink_to(elsewhere)
    with pytest.raises(DataError, match=rf"keeps its data in 'w.bin' \(a link to {elsewhere}\), outside the "
                                        r"model's folder; external data must sit beside the model, not be linked"):
        onnx_session(model)


def test_a64_t3_external_data_named_outside_without_a_link_says_no_link(tmp_path):
    from distill_export.runtimes.onnx_runtime import check_external_data

    model = _external_data_model(tmp_path)
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    proto.graph.initializer[0].external_data[0].value = "../w.bin"
    onnx.save_model(proto, str(model))
    with pytest.raises(DataError, match=r"keeps its data in '\.\./w\.bin', outside the model's folder") as caught:
        check_external_data(model)
    assert "a link" not in str(caught.value)


def test_a64_t2_same_weights_compares_a_checkpoint_with_its_bare_state_dict(tiny_run, tmp_path):
    """The same weights in student.pt and in a bare state_dict were "26 differences" (every tensor
    "only in" one file). Now the weights are compared, the container difference said, exit 1."""
    import torch

    from _cli_checks import run_same_weights

    state = torch.load(tiny_run / "student.pt", map_location="cpu", weights_only=True)["state_dict"]
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    code, out = run_same_weights(tiny_run / "student.pt", bare)
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[-1] == "same weights, other containers", out
    assert lines[0].startswith("the first is a checkpoint and the other a bare state_dict: compared their "
                               "weights; only the first holds arch, arch_kwargs, format, kind, meta"), out
    changed = dict(state)
    name = next(iter(changed))
    changed[name] = changed[name] + 1
    torch.save(changed, bare)
    code, out = run_same_weights(bare, tiny_run / "student.pt")
    assert code == 1 and out.strip().splitlines()[-1] == "1 differences in the weights", out
    assert f"{name}: tensors differ" in out and "only the second holds" in out
