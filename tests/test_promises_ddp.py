"""Issue 25, DDP means: distributed.py's helpers, on two gloo ranks with uneven shards, give the
one-process numbers: a mean over rows divided by global_count (then averaged by DDP) or scaled
by row_share is the mean over the whole batch; shard() hands out every row exactly once;
gather_rows() is the whole batch in rank order, with the gradient back to each rank's rows.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

from distill_export import distributed as ddp

ROWS = 7  # shards of 4 and 3 rows


def _values() -> torch.Tensor:
    return torch.arange(1.0, ROWS + 1) ** 2  # 1, 4, 9, ..., 49


def _labeled() -> torch.Tensor:
    return torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = ddp.shard(torch.arange(ROWS))
        x, lab = _values()[rows], _labeled()[rows]
        res = {"rows": rows, "world": ddp.world(), "rank": ddp.rank(), "distributed": ddp.is_distributed()}
        # a masked mean with a global denominator, as a loss term computes it; DDP then averages
        res["masked_mean"] = (x * lab).sum() / ddp.global_count(lab.sum())
        res["row_mean"] = x.mean() * ddp.row_share(len(rows))
        leaf = x.clone().requires_grad_(True)
        gathered = ddp.gather_rows(leaf.unsqueeze(1))
        (gathered.squeeze(1) * torch.arange(1.0, ROWS + 1)).sum().backward()
        res["gathered"], res["grad"] = gathered.detach(), leaf.grad
        res["broadcast"] = ddp.broadcast_object({"from": rank})
        torch.save(res, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()
    ddp.exit_after_success()  # the gloo teardown race at interpreter exit (see there)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = str(tmp_path_factory.mktemp("ddp_means") / "rank")
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


def test_ranks_see_two_processes_and_shards_cover_every_row_once(ranks):
    assert [(r["rank"], r["world"], r["distributed"]) for r in ranks] == [(0, 2, True), (1, 2, True)]
    rows = torch.cat([r["rows"] for r in ranks])
    assert sorted(rows.tolist()) == list(range(ROWS))
    assert [len(r["rows"]) for r in ranks] == [4, 3]
    assert [r["broadcast"] for r in ranks] == [{"from": 0}, {"from": 0}]  # rank 0's, on every rank


def test_global_denominators_give_the_one_process_means(ranks):
    x, lab = _values(), _labeled()
    whole_masked = float((x * lab).sum() / lab.sum())
    whole_mean = float(x.mean())
    # DDP averages the ranks' gradients, so the ranks' terms are averaged too
    assert sum(float(r["masked_mean"]) for r in ranks) / 2 == pytest.approx(whole_masked, rel=1e-6)
    assert sum(float(r["row_mean"]) for r in ranks) / 2 == pytest.approx(whole_mean, rel=1e-6)
    local = sum(float(_values()[r["rows"]].mean()) for r in ranks) / 2
    assert local != pytest.approx(whole_mean)  # uneven shards: a plain per-rank mean would be wrong


def test_gather_rows_is_the_whole_batch_in_rank_order_with_gradients_home(ranks):
    rows = torch.cat([r["rows"] for r in ranks])
    for r in ranks:
        assert torch.equal(r["gathered"].squeeze(1), _values()[rows])
        start = 0 if r["rank"] == 0 else len(ranks[0]["rows"])
        want = torch.arange(1.0, ROWS + 1)[start : start + len(r["rows"])]
        # every rank computes the same whole-batch term: the gather's backward sums the ranks'
        # gradients onto each rank's own rows (world·w), and DDP's average divides by the world
        assert torch.equal(r["grad"], 2 * want)


def test_one_process_helpers_are_the_identity():
    assert not ddp.is_distributed() and ddp.world() == 1 and ddp.rank() == 0 and ddp.is_main()
    rows = torch.arange(5)
    assert torch.equal(ddp.shard(rows), rows) and ddp.row_share(5) == 1.0
    assert torch.equal(ddp.global_count(torch.tensor(0)), torch.tensor(1))  # never a division by 0
    assert torch.equal(ddp.global_count(torch.tensor(3)), torch.tensor(3))
    x = torch.randn(3, 2)
    assert ddp.gather_rows(x) is x and ddp.broadcast_object({"a": 1}) == {"a": 1}
