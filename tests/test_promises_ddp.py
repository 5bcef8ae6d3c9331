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
        res["one_row_share"] = ddp.row_share(1 - rank)  # a global batch of one row: rank 0 holds it
        leaf = x.clone().requires_grad_(True)
        gathered = ddp.gather_rows(leaf.unsqueeze(1))
        (gathered.squeeze(1) * torch.arange(1.0, ROWS + 1)).sum().backward()
        res["gathered"], res["grad"] = gathered.detach(), leaf.grad
        res["broadcast"] = ddp.broadcast_object({"from": rank})
        res["any_one"], res["any_none"] = ddp.any_rank(rank == 1), ddp.any_rank(False)
        # BatchNorm running statistics end on each rank's shard; sync_from_main makes them rank 0's
        bn = torch.nn.BatchNorm1d(1)
        bn(x.unsqueeze(1))
        res["bn_own"] = {k: v.clone() for k, v in bn.state_dict().items()}
        ddp.sync_from_main(bn)
        res["bn_synced"] = bn.state_dict()
        # wrap: DDP averages the ranks' gradients (gloo on CPU)
        torch.manual_seed(0)
        lin = torch.nn.Linear(1, 1)
        wrapped = ddp.wrap(lin, torch.device("cpu"))
        res["wrapped"] = type(wrapped).__name__
        wrapped(x.unsqueeze(1)).pow(2).mean().backward()
        res["lin_grad"] = lin.weight.grad.clone()
        ddp.barrier()
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
    assert sorted(rows.tolist()) == ddp.shard(torch.arange(ROWS)).tolist()  # the one process's rows, once each
    assert [len(r["rows"]) for r in ranks] == [4, 3]
    assert [r["broadcast"] for r in ranks] == [{"from": 0}, {"from": 0}]  # rank 0's, on every rank
    # one process: world 1, rank 0, its own object (run here too: mutmut links a test only to code
    # run in its own process, and the ranks run the same functions with the same mutant)
    assert (ddp.world(), ddp.rank(), ddp.is_main(), ddp.broadcast_object("own")) == (1, 0, True, "own")


def test_global_denominators_give_the_one_process_means(ranks):
    x, lab = _values(), _labeled()
    whole_masked = float((x * lab).sum() / lab.sum())
    whole_mean = float(x.mean())
    # the same expressions in one process (mutmut links a test only to code run in its own process)
    assert float((x * lab).sum() / ddp.global_count(lab.sum())) == pytest.approx(whole_masked, rel=1e-6)
    assert float(x.mean() * ddp.row_share(ROWS)) == whole_mean
    # DDP averages the ranks' gradients, so the ranks' terms are averaged too
    assert sum(float(r["masked_mean"]) for r in ranks) / 2 == pytest.approx(whole_masked, rel=1e-6)
    assert sum(float(r["row_mean"]) for r in ranks) / 2 == pytest.approx(whole_mean, rel=1e-6)
    # one row in the whole batch: rank 0's mean of it, doubled, then averaged by DDP with rank 1's 0
    assert [r["one_row_share"] for r in ranks] == [2.0, 0.0]
    local = sum(float(_values()[r["rows"]].mean()) for r in ranks) / 2
    assert local != pytest.approx(whole_mean)  # uneven shards: a plain per-rank mean would be wrong


def test_gather_rows_is_the_whole_batch_in_rank_order_with_gradients_home(ranks):
    rows = torch.cat([r["rows"] for r in ranks])
    whole = ddp.gather_rows(_values().unsqueeze(1))  # one process: the batch itself
    for r in ranks:
        assert torch.equal(r["gathered"], whole[rows])
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


def _local_grad(rows: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    lin = torch.nn.Linear(1, 1)
    lin(_values()[rows].unsqueeze(1)).pow(2).mean().backward()
    return lin.weight.grad


def test_any_rank_is_true_on_every_rank_when_one_rank_says_so(ranks):
    assert [(r["any_one"], r["any_none"]) for r in ranks] == [(True, False), (True, False)]
    assert ddp.any_rank(True) is True and ddp.any_rank(False) is False  # one process: the flag


def test_sync_from_main_gives_every_rank_rank_0s_buffers(ranks):
    own0, own1 = ranks[0]["bn_own"], ranks[1]["bn_own"]
    assert not torch.equal(own0["running_mean"], own1["running_mean"])  # each rank's shard
    for r in ranks:
        for k, v in own0.items():
            assert torch.equal(r["bn_synced"][k], v), k
    bn = torch.nn.BatchNorm1d(1)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    ddp.sync_from_main(bn)  # one process: nothing changes
    assert all(torch.equal(bn.state_dict()[k], v) for k, v in before.items())


def test_wrap_averages_the_ranks_gradients(ranks):
    want = (_local_grad(ranks[0]["rows"]) + _local_grad(ranks[1]["rows"])) / 2
    for r in ranks:
        assert r["wrapped"] == "DistributedDataParallel"
        torch.testing.assert_close(r["lin_grad"], want)
    lin = torch.nn.Linear(1, 1)
    assert ddp.wrap(lin, torch.device("cpu")) is lin  # one process: the module itself
    ddp.barrier()  # one process: returns


def test_torchrun_environment_and_backends(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not ddp.launched_by_torchrun()
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    for missing in env:
        for name, value in env.items():
            if name != missing:
                monkeypatch.setenv(name, value)
            else:
                monkeypatch.delenv(name, raising=False)
        assert not ddp.launched_by_torchrun(), missing
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ddp.launched_by_torchrun()
    assert ddp.backend_for("cuda") == "nccl" and ddp.backend_for("cpu") == "gloo"
    monkeypatch.setattr(ddp, "_run_command", False)
    assert not ddp.in_run_command()
    ddp.enter_run_command()
    assert ddp.in_run_command()


def test_nproc_is_checked_against_the_cores():
    from distill_export.device import all_threads
    from distill_export.errors import ConfigError

    ddp.check_nproc(1, "cpu")
    ddp.check_nproc(all_threads(), "cpu")
    for bad, says in ((0, "--nproc must be >= 1, got 0"),
                      (all_threads() + 1, f"--nproc {all_threads() + 1} is more than the {all_threads()} CPU cores")):
        with pytest.raises(ConfigError) as info:
            ddp.check_nproc(bad, "cpu")
        assert str(info.value).startswith(says), str(info.value)


def test_joining_a_group_needs_its_backend_and_a_gpu_per_process(monkeypatch):
    from distill_export import device
    from distill_export.errors import BackendUnavailable, ConfigError

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="the gloo backend is not available .*--device cpu"):
        ddp.init_from_env("cpu")
    monkeypatch.setattr(device, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="the nccl backend is not available .*--device cuda"):
        ddp.init_from_env("cuda")
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 processes per node but 1 visible GPUs"):
        ddp.init_from_env("cuda")
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="no torch.distributed"):
        ddp.init_from_env("cpu")
    assert not ddp.is_distributed()


def test_a_one_process_group_joins_and_leaves(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert ddp.init_from_env("cpu") == torch.device("cpu")
    try:
        assert ddp.is_distributed() and torch.distributed.get_backend() == "gloo"
        assert ddp.world() == 1 and ddp.rank() == 0 and ddp.is_main()
        assert ddp.any_rank(True) and not ddp.any_rank(False)
        assert ddp.row_share(3) == 1.0 and float(ddp.global_count(torch.tensor(0))) == 1.0
    finally:
        ddp.shutdown()
    assert not ddp.is_distributed()
    ddp.shutdown()  # a second call: nothing to leave


# ----- CUDA paths and the torchrun launcher, with torch's pieces faked (no GPU, no torchrun here) --

def test_nproc_on_cuda_is_one_process_per_visible_gpu(monkeypatch):
    from distill_export import device
    from distill_export.errors import ConfigError

    monkeypatch.setattr(device, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ddp.check_nproc(2, "cuda")
    with pytest.raises(ConfigError) as info:
        ddp.check_nproc(3, "cuda")
    assert str(info.value) == "--nproc 3 is more than the 2 visible GPUs (one GPU per process)"


def test_a_cuda_rank_takes_the_gpu_of_its_local_rank_and_nccl_with_gloo(monkeypatch):
    from distill_export import device

    calls = []
    monkeypatch.setattr(device, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # as many processes as GPUs: allowed
    assert ddp.init_from_env("cuda") == torch.device("cuda", 1)
    # nccl for CUDA tensors, gloo for the CPU ones (row counts, pickled objects)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "cpu:gloo,cuda:nccl")]
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    calls.clear()
    assert ddp.init_from_env("cuda") == torch.device("cuda", 1) and calls[-1] == ("init", "nccl")
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(Exception) as info:
        ddp.init_from_env("cuda")
    assert str(info.value) == "torchrun: this PyTorch build has no torch.distributed"


def test_wrap_uses_syncbatchnorm_and_the_rank_s_gpu_on_cuda_only(monkeypatch):
    class FakeDDP:
        def __init__(self, module, **kwargs):
            self.module, self.kwargs = module, kwargs

    monkeypatch.setattr(ddp, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    on_gpu = ddp.wrap(net, torch.device("cuda", 1))
    assert on_gpu.kwargs == {"device_ids": [1]} and isinstance(on_gpu.module[1], torch.nn.SyncBatchNorm)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    on_cpu = ddp.wrap(net, torch.device("cpu"))  # gloo has no SyncBatchNorm
    assert on_cpu.kwargs == {} and on_cpu.module is net and type(net[1]) is torch.nn.BatchNorm1d


def test_a_finished_rank_exits_0_without_finalization(monkeypatch):
    codes = []

    def fake_exit(code):
        codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        ddp.exit_after_success()
    assert codes == [0]


class _FakeAgent:
    """subprocess.Popen for launch_torchrun's agent: `behave(agent, timeout)` plays the agent."""

    def __init__(self, behave):
        self.behave, self.signals, self.killed, self.waits = behave, [], False, []

    def __call__(self, cmd, env):
        self.cmd, self.env = cmd, env
        return self

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return self.behave(self, timeout)

    def send_signal(self, sig):
        self.signals.append(sig)

    def kill(self):
        self.killed = True


def _launch(monkeypatch, behave) -> _FakeAgent:
    import subprocess

    agent = _FakeAgent(behave)
    monkeypatch.setattr(subprocess, "Popen", agent)
    return agent


def test_launch_runs_the_agent_with_this_command_and_a_folder_for_rank_errors(monkeypatch):
    import sys

    from distill_export import rank_errors

    seen = []
    agent = _launch(monkeypatch, lambda a, t: seen.append(os.path.isdir(a.env[rank_errors.ENV])) or 0)
    ddp.launch_torchrun(2, ["run", "--out", "x"])
    assert agent.cmd == [sys.executable, "-c", "from distill_export.distributed import agent_main; agent_main()",
                         "--standalone", "--nproc-per-node=2", "-m", "distill_export", "run", "--out", "x"]
    assert agent.env["PATH"] == os.environ["PATH"] and seen == [True]
    assert not os.path.exists(agent.env[rank_errors.ENV])  # removed afterwards


@pytest.mark.parametrize("written, says, code", [
    ({"rank1.json": {"message": "error: --lr bad", "code": 2}}, "error: --lr bad", 2),
    ({"agent.json": {"rank": 1, "exitcode": -9}}, "rank 1 of 2 was killed by SIGKILL", 1),
    ({}, "torchrun failed with exit code 3 before the ranks reported an error", 1)])
def test_a_failed_rank_is_one_line_with_its_exit_code(monkeypatch, written, says, code):
    import json
    from pathlib import Path

    from distill_export import rank_errors
    from distill_export.errors import DistillExportError

    def fail(agent, timeout):
        for name, record in written.items():
            (Path(agent.env[rank_errors.ENV]) / name).write_text(json.dumps(record))
        return 3

    _launch(monkeypatch, fail)
    with pytest.raises(DistillExportError) as info:
        ddp.launch_torchrun(2, ["run"])
    assert str(info.value).startswith(says) and info.value.exit_code == code


@pytest.mark.parametrize("agent_stops", [True, False])
def test_an_interrupted_launch_stops_the_agent_then_raises(monkeypatch, agent_stops):
    import signal
    import subprocess

    def interrupted(agent, timeout):
        if timeout is None:
            raise KeyboardInterrupt
        if not agent_stops:
            raise subprocess.TimeoutExpired("agent", timeout)
        return -15

    agent = _launch(monkeypatch, interrupted)
    with pytest.raises(KeyboardInterrupt):
        ddp.launch_torchrun(2, ["run"])
    assert agent.signals == [signal.SIGTERM] and agent.waits == [None, 60] and agent.killed is not agent_stops


def test_the_agent_ends_with_the_failed_rank_s_code_and_leaves_a_note(monkeypatch, tmp_path):
    import json
    import logging
    import signal
    import sys

    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from distill_export import rank_errors

    monkeypatch.setenv(rank_errors.ENV, str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["agent", "--standalone", "--nproc-per-node=2", "-m", "distill_export", "run"])
    elastic, other = logging.getLogger("torch.distributed.elastic.agent.x"), logging.getLogger("torch.distributed.x")
    elastic.setLevel(logging.NOTSET)  # as a fresh process has it (an earlier call in this process set it)
    other.setLevel(logging.INFO)
    seen = []
    monkeypatch.setattr(torchrun, "run", lambda args: seen.append((args.nproc_per_node, args.standalone, args.module,
                                                                   args.training_script, args.training_script_args)))
    ddp.agent_main()
    assert seen == [("2", True, True, "distill_export", ["run"])]
    assert elastic.level == logging.CRITICAL and other.level == logging.INFO  # torchrun's failure lines only
    for exitcode, ends in ((2, 2), (-9, 1), (0, 1)):  # a failure never ends 0; a signal (negative) ends 1
        def failed(args, exitcode=exitcode):
            raise ChildFailedError("distill_export", {1: ProcessFailure(1, 123, exitcode, str(tmp_path / "none"))})

        monkeypatch.setattr(torchrun, "run", failed)
        with pytest.raises(SystemExit) as info:
            ddp.agent_main()
        assert info.value.code == ends
        assert json.loads((tmp_path / rank_errors.AGENT).read_text()) == {"rank": 1, "exitcode": exitcode}

    def signalled(args):
        raise SignalException("stopped", sigval=signal.SIGTERM)

    monkeypatch.setattr(torchrun, "run", signalled)
    with pytest.raises(SystemExit) as info:
        ddp.agent_main()
    assert info.value.code == 128 + signal.SIGTERM
