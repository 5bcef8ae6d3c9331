"""DistributedDataParallel on the gloo backend (CPU): one optimiser step with each rank on its
shard of the batch equals one step on one process with the whole batch, with unlabeled rows
and uneven shards; and a short 2-process `run` writes one report with a 1-process run's keys."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distill_export.config import DistillConfig
from distill_export.data.dataset import IGNORE_INDEX
from distill_export.methods import DistillModule, Objective, SetupInfo, TermInputs, term_specs
from distill_export.train import TrainSpec, train_loop

ROWS, FEATURES, CLASSES, TEACHER_DIM = 7, 6, 3, 4  # 7 rows: shards of 4 and 3 rows


class TinyStudent(nn.Module):
    """No BatchNorm: gloo has no SyncBatchNorm, and per-shard statistics would differ by design."""

    feature_dim = 5

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(FEATURES, 5), nn.Linear(5, CLASSES)

    def forward_features(self, x):
        f = torch.tanh(self.body(x))
        return f, self.head(f)


def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=gen)
    labels = torch.tensor([0, IGNORE_INDEX, 2, 1, IGNORE_INDEX, IGNORE_INDEX, 1])  # ranks get 2 and 1 labeled rows
    teacher_logits = 3 * torch.randn(ROWS, CLASSES, generator=gen)
    teacher_feats = torch.randn(ROWS, TEACHER_DIM, generator=gen)
    return x, labels, teacher_logits, teacher_feats


def one_step(method: str) -> dict:
    """One optimiser step of train_loop (one epoch of one batch); under DDP on this rank's shard."""
    from distill_export import distributed as ddp

    torch.manual_seed(0)
    x, labels, t_logits, t_feats = batch()
    cfg = DistillConfig(method=method, alpha=0.3, beta=0.5)
    objective = Objective(term_specs(cfg))
    objective.setup(SetupInfo(CLASSES, TinyStudent.feature_dim, TEACHER_DIM))
    module = DistillModule(TinyStudent(), objective)
    initial = {f"init.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    forward = ddp.wrap(module, torch.device("cpu"))

    def batch_loss(rows):
        logits, side = forward(x[rows])
        return module.objective(TermInputs(logits, labels[rows], t_logits[rows], t_feats[rows], side))

    spec = TrainSpec(epochs=1, lr=0.05, batch_size=ROWS, seed=0)
    train_loop([module], batch_loss, ROWS, lambda: 1.0, spec, "ddp", quiet=True)
    # The gradients too: AdamW's first step is ~lr·sign(grad), so parameters alone would hardly
    # see a wrongly scaled loss. The loop leaves the step's (DDP-averaged) gradients in .grad.
    grads = {f"grad.{k}": p.grad.detach().clone() for k, p in module.named_parameters() if p.grad is not None}
    return {**{k: v.detach().clone() for k, v in module.state_dict().items()}, **grads, **initial}


# What each rank computes in the one spawned process group: (name, method, rank-local means).
CASES = (("kd_pseudo_label", "kd_pseudo_label", False), ("hinton", "hinton", False), ("dist", "dist", False),
         ("kd_pseudo_label/local_means", "kd_pseudo_label", True))


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    """Every case of CASES in one process group: one spawn (two interpreters importing torch)
    instead of one per case. The rank-local case comes last: it patches the denominators."""
    import distill_export.distributed as ddp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        states = {}
        for name, method, local_means in CASES:
            if local_means:  # what a loss without distributed.global_count/row_share would compute
                import distill_export.methods.ce as ce
                import distill_export.methods.pseudo_label as pl

                ce.global_count = pl.global_count = lambda count: count.clamp(min=1)
                ddp.row_share = lambda n_local: 1.0
            states[name] = one_step(method)
        if rank == 0:
            torch.save(states, out)
    finally:
        torch.distributed.destroy_process_group()
    ddp.exit_after_success()  # the gloo teardown race at interpreter exit (see there)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """Rank 0's state after one step of each case in CASES, two ranks on gloo."""
    out = tmp_path_factory.mktemp("ddp_step") / "rank0.pt"
    torch.multiprocessing.spawn(_rank_main, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


# dist: its intra-class term correlates columns over the whole batch (gathered from the ranks)
@pytest.mark.parametrize("method", ["kd_pseudo_label", "hinton", "dist"])
def test_two_ranks_on_half_batches_equal_one_process_on_the_whole(two_ranks, method):
    distributed = two_ranks[method]
    single = one_step(method)
    assert distributed.keys() == single.keys()
    for name, value in single.items():
        # fp32 sums in another order (per shard, then all-reduced): ~1e-7; the bound is 1e-5
        torch.testing.assert_close(distributed[name], value, atol=1e-5, rtol=0, msg=name)
    params = [k for k in single if not k.startswith(("grad.", "init."))]
    moved = [k for k in params if not torch.equal(single[k], single[f"init.{k}"])]
    assert moved == params, "a parameter the step did not change would prove nothing"
    assert sorted(k[5:] for k in single if k.startswith("grad.")) == sorted(params)  # every parameter has a gradient


def test_without_global_denominators_the_ranks_would_differ(two_ranks):
    """The parity check has teeth: rank-local denominators (a plain per-rank mean) break it."""
    distributed, single = two_ranks["kd_pseudo_label/local_means"], one_step("kd_pseudo_label")
    assert max((distributed[k] - single[k]).abs().max().item() for k in single if k.startswith("grad.")) > 1e-3


def _cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.mark.slow  # ~20 s on a loaded 2-core machine: torchrun, two ranks, then export/validate/profile/report
@pytest.mark.skipif(_cpu_cores() < 2, reason="--nproc 2 on CPU needs 2 cores (one process per core)")
def test_a_two_process_run_writes_one_report_with_the_same_keys(tmp_path, tmp_path_factory, tiny_run):
    """On a small image+audio manifest (12 labeled train rows, 4 unlabeled, 9 test rows), not the
    demo: the ranks' work is the same code path and the run takes half the time."""
    from _byo_fixtures import make_manifest

    manifest = make_manifest(tmp_path_factory.mktemp("ddp_data"), per_class=8, modalities=("image", "audio"),
                             unlabeled=4)
    cfg = tmp_path / "tiny.yaml"
    # Epochs are nearly free at this size and make the accuracy check below mean something.
    cfg.write_text("teacher: {epochs: 10}\ndistill: {epochs: 20, self_training_control: false}\n"
                   "profile: {batches: [1], threads: [1], warmup_s: 0.01, min_time_s: 0.05, min_iters: 5}\n")
    out = tmp_path / "ddp"
    # OMP_NUM_THREADS unset, as on a user's shell: the launcher gives each rank one thread
    # (torchrun's default) without torchrun's 4-line warning under --quiet (fifteenth audit)
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "distill_export", "run", "--nproc", "2", "--device", "cpu",
                           "--config", str(cfg), "--data", str(manifest), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OMP_NUM_THREADS" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    # rank 0 alone runs the teacher over the training rows and writes the cache; rank 1 reads it
    assert (proc.stdout + proc.stderr).count("teacher outputs: cache miss") == 1, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "tiny.yaml"]  # rank 1 left nothing
    report = json.loads((out / "report.json").read_text())
    single = json.loads((Path(tiny_run) / "report.json").read_text())
    assert set(report) == set(single)
    assert set(report["distill"]) == set(single["distill"])
    assert report["distill"]["processes"] == 2 and single["distill"]["processes"] == 1
    student = report["metrics"]["student"]
    assert student["n"] == 9  # rank 0 scored the whole test split, not its shard
    assert student["accuracy"] > 0.5  # chance is 1/3 (1.0 with torch 2.14.1): the 2-process training learned


def test_nproc_beyond_the_cores_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from distill_export.cli import app

    result = CliRunner().invoke(app, ["run", "--nproc", "4096", "--device", "cpu", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--nproc 4096 is more than the" in result.output and "CPU cores" in result.output
    assert not (tmp_path / "x").exists()


def test_a_stage_command_under_torchrun_is_one_line(tmp_path, monkeypatch):
    """Only `run` knows how ranks share a run directory; a stage command under torchrun says so."""
    from typer.testing import CliRunner

    from distill_export.cli import app

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = CliRunner().invoke(app, ["train-teacher", "--out", str(tmp_path / "t"), "--teacher-epochs", "1"])
    assert result.exit_code == 2
    assert "under torchrun only `distill-export run` trains in parallel" in result.output


def test_torchrun_with_an_unavailable_backend_is_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from distill_export.cli import app

    for var, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    result = CliRunner().invoke(app, ["run", "--device", "cpu", "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert errors == ["error: torchrun: the gloo backend is not available in this PyTorch build (needed for --device cpu)"]
    assert not (tmp_path / "r").exists()
