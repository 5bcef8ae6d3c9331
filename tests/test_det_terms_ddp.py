"""The detection terms under DistributedDataParallel (gloo, CPU): two ranks on uneven shards of a
batch give the one-process gradient of the whole batch, because each term divides by a global
count (pseudo-boxes, teacher peaks, PKD mask weight). Rank 0 holds every labeled row and rank 1
none, so a rank with no pseudo-box must still join the all-reduce (no early return before it)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from distill_export.config import DistillConfig
from distill_export.methods import DistillModule, Objective, SetupInfo, TermInputs, term_specs

from test_ddp import free_port
from test_det_terms import C, SIZE, boxes, render_heads

TERMS = [{"name": "pseudo_boxes", "weight": 0.5, "threshold": 0.5}, {"name": "heatmap_kd", "weight": 0.3},
         {"name": "pkd", "weight": 0.2, "background_weight": 0.2}]


class TinyDetector(nn.Module):
    """No BatchNorm: gloo has no SyncBatchNorm, and per-shard statistics would differ by design."""

    feature_dim = 6

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Conv2d(1, 6, 3, stride=4, padding=1), nn.Conv2d(6, C + 4, 1)

    def forward_features(self, x):
        f = torch.tanh(self.body(x))
        return f, self.head(f)


def batch():
    """5 rows (shards [0, 2, 4] and [1, 3]); rows 0, 2, 4 labeled."""
    truth, labels = boxes()
    truth, labels = torch.cat([truth, truth[1:2]]), torch.cat([labels, truth[1:2]])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, SIZE, SIZE, generator=g)
    teacher = render_heads(truth, peak=0.8) + 0.5 * torch.randn(5, C + 4, 8, 8, generator=g)
    return x, labels, teacher, torch.randn(5, 5, 8, 8, generator=g)


def gradients() -> dict[str, torch.Tensor]:
    """The objective's gradient on this rank's shard (DDP-averaged), or on the whole batch."""
    from distill_export import distributed as ddp

    torch.manual_seed(0)
    objective = Objective(term_specs(DistillConfig(terms=TERMS)))
    objective.setup(SetupInfo(C, TinyDetector.feature_dim, 5, task="detection"))
    module = DistillModule(TinyDetector(), objective)
    rows = ddp.shard(torch.arange(5))
    x, labels, teacher, feats = (t[rows] for t in batch())
    wrapped = ddp.wrap(module, torch.device("cpu"))  # kept alive until backward: its hooks all-reduce
    out, side = wrapped(x)
    total, _ = module.objective(TermInputs(out, labels, teacher, feats, side))
    total.backward()
    return {k: p.grad.detach().clone() for k, p in module.named_parameters()}


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    import distill_export.distributed as ddp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        grads = gradients()
        if rank == 0:
            torch.save(grads, out)
    finally:
        torch.distributed.destroy_process_group()
    ddp.exit_after_success()


@pytest.mark.slow
def test_two_ranks_give_the_one_process_gradient(tmp_path):
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(_rank_main, args=(2, free_port(), str(out)), nprocs=2, join=True)
    distributed, single = torch.load(out, weights_only=True), gradients()
    assert distributed.keys() == single.keys() and any("projector" in k for k in single)
    for name, value in single.items():
        assert value.abs().sum() > 0, name
        torch.testing.assert_close(distributed[name], value, atol=1e-5, rtol=1e-4, msg=name)
