"""Data-parallel training with PyTorch's own engine: torchrun + DistributedDataParallel.

`torchrun --nproc-per-node N -m distill_export run ...` starts N copies of the command; each
reads RANK/WORLD_SIZE/LOCAL_RANK from the environment (nanoGPT's train.py is the model).
Every rank draws the same global batch order (the same seeded generator as one process)
and trains on its shard of each global batch, rows[rank::world]: one step on N ranks is one
step on one process with the whole batch, once the losses use global denominators
(`global_count`, `row_share`). Rank 0 alone writes files and prints progress.

Without torchrun's environment every function here is the one-process identity, so the
plain path runs exactly the code it ran before.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from distill_export.errors import BackendUnavailable, ConfigError


_run_command = False  # set by `run` under torchrun: the one command whose ranks share a run directory


def enter_run_command() -> None:
    global _run_command
    _run_command = True


def in_run_command() -> bool:
    return _run_command


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def init_from_env(device_name: str) -> torch.device:
    """Join the process group torchrun describes; returns this rank's device.

    CPU ranks use gloo, CUDA ranks nccl with one GPU per local rank. An unavailable backend or
    more ranks per node than GPUs is a one-line error (BackendUnavailable / ConfigError)."""
    from distill_export.device import resolve_device

    if not torch.distributed.is_available():
        raise BackendUnavailable("torchrun: this PyTorch build has no torch.distributed")
    device = resolve_device(device_name)
    backend = backend_for(device.type)
    check = torch.distributed.is_nccl_available if backend == "nccl" else torch.distributed.is_gloo_available
    if not check():
        raise BackendUnavailable(f"torchrun: the {backend} backend is not available in this PyTorch build "
                                 f"(needed for --device {device.type})")
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda":
        if local_world > torch.cuda.device_count():
            raise ConfigError(f"torchrun: {local_world} processes per node but {torch.cuda.device_count()} "
                              "visible GPUs; use --nproc-per-node <= the GPU count (one GPU per process)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not is_distributed():
        # On CUDA, nccl for CUDA tensors and gloo for the few CPU ones (distributed.row_share's
        # row counts, broadcast_object's pickles): an nccl-only group rejects CPU tensors.
        both = backend == "nccl" and torch.distributed.is_gloo_available()
        torch.distributed.init_process_group(backend="cpu:gloo,cuda:nccl" if both else backend)
    return device


def shutdown() -> None:
    if is_distributed():
        torch.distributed.destroy_process_group()


def exit_after_success() -> None:
    """End a torchrun rank that finished its work, skipping interpreter finalization.

    With gloo on this torch, a process can abort at exit ("terminate called without an active
    exception", SIGABRT) after destroy_process_group: a gloo worker thread still holds tensors
    while the interpreter is torn down (pytorch/pytorch#179291, #190489). Seen in about 1 in 10
    two-process tests here; torchrun would report that rank as failed. Files are already
    written and closed, so only the streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on any rank (one all-reduce); the flag itself in one process."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def shard(rows: torch.Tensor) -> torch.Tensor:
    """This rank's rows of one global batch (B,) -> (~B/world,)."""
    return rows[rank()::world()] if is_distributed() else rows


def global_count(count: torch.Tensor) -> torch.Tensor:
    """The denominator of a mean over rows that every rank counts locally (labeled rows, say).

    One process: count.clamp(min=1), as a loss always divided. N ranks: the all-reduced count
    divided by N, because DDP averages the ranks' gradients: Σ_r (sum_r / (total/N)) / N =
    Σ_r sum_r / total, the one-process mean over the whole batch."""
    if not is_distributed():
        return count.clamp(min=1)
    total = count.detach().to(torch.float64).clone()
    torch.distributed.all_reduce(total)
    return (total.clamp(min=1) / world()).to(torch.float32)


def row_share(n_local: int) -> float:
    """Factor that turns a mean over this rank's n_local rows into its share of the global mean
    (n_local·world / n_global); 1.0 when every rank has the same number of rows."""
    if not is_distributed():
        return 1.0
    total = torch.tensor([float(n_local)], dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return n_local * world() / max(float(total.item()), 1.0)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(n_local, ...) -> (n_global, ...): every rank's rows, in rank order, on every rank; the
    gradient flows back to each rank's own rows. For batch-wise terms (DIST's intra-class
    correlation over rows) that a shard alone cannot compute. Shards may differ by a row, so
    each is padded to the longest and cut back after the gather. One process: x itself."""
    if not is_distributed():
        return x
    import torch.nn.functional as F
    from torch.distributed.nn.functional import all_gather

    size = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world())]
    torch.distributed.all_gather(sizes, size)
    longest = max(int(n) for n in sizes)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, longest - x.shape[0]))
    return torch.cat([part[: int(n)] for part, n in zip(all_gather(padded), sizes)])


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the one trainable module (SyncBatchNorm on CUDA); the
    module itself in one process. Call the returned module's forward, so gradients sync."""
    if not is_distributed():
        return module
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index])
    # gloo on CPU has no SyncBatchNorm: each rank normalises with its shard's statistics.
    return nn.parallel.DistributedDataParallel(module)


def sync_from_main(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (in place). DDP keeps parameters equal, but
    without SyncBatchNorm (CPU) each rank's BatchNorm running statistics end on its own shard's;
    after training every rank must hold the model rank 0 saves (the teacher's outputs come from it)."""
    if not is_distributed():
        return
    for tensor in module.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)


def broadcast_object(obj):
    """Rank 0's object on every rank (e.g. the checkpoint rank 0 alone reads)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def check_nproc(nproc: int, device_name: str) -> None:
    """--nproc N: one process per GPU on CUDA; on CPU at most one per core (each gloo rank
    runs its own forward/backward, so more ranks than cores only time-share)."""
    from distill_export.device import all_threads, resolve_device

    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    device = resolve_device(device_name)
    if device.type == "cuda":
        have, what = torch.cuda.device_count(), "visible GPUs (one GPU per process)"
    else:
        have, what = all_threads(), "CPU cores (one process per core on CPU)"
    if nproc > have:
        raise ConfigError(f"--nproc {nproc} is more than the {have} {what}")


def launch_torchrun(nproc: int, argv: list[str]) -> None:
    """Re-run this command under torchrun on one node with nproc processes. A rank that fails
    hands its one-line error to this process (rank_errors.py), raised here as a
    DistillExportError with the rank's exit code: one line, never torchrun's traceback."""
    import signal
    import subprocess
    import tempfile
    from pathlib import Path

    from distill_export import rank_errors
    from distill_export.errors import DistillExportError

    with tempfile.TemporaryDirectory(prefix="distill-export-ranks-") as folder:
        # torch.distributed.run's agent, run by agent_main below: no PATH lookup, and no traceback
        cmd = [sys.executable, "-c", "from distill_export.distributed import agent_main; agent_main()",
               "--standalone", f"--nproc-per-node={nproc}", "-m", "distill_export", *argv]
        # torchrun's own default (one OpenMP thread per rank) set here, so its 4-line warning about
        # setting it does not print under -q (fifteenth audit); a user's OMP_NUM_THREADS is kept
        env = {"OMP_NUM_THREADS": "1", **os.environ, rank_errors.ENV: folder}
        agent = subprocess.Popen(cmd, env=env)
        try:
            code = agent.wait()
        except BaseException:  # SIGTERM or Ctrl-C here: the agent stops the ranks, then we go
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                agent.kill()
            raise
        if code == 0:
            return
        message, exit_code = rank_errors.summary(Path(folder), nproc, code)
    error = DistillExportError(message)
    error.exit_code = exit_code
    raise error


def agent_main() -> None:
    """torchrun (torch.distributed.run) for launch_torchrun: the same agent, but a failed rank
    ends it with that rank's exit code and a note for the launcher (rank_errors.write_agent),
    instead of a ChildFailedError traceback and log lines; a signal ends it with 128 + signal."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from distill_export import rank_errors

    args = parse_args(sys.argv[1:])
    # Each elastic module's logger has its own level: its failure lines ("failed (exitcode: 2)",
    # "Sending process ... closing signal") are what the launcher's one line replaces.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        rank_errors.write_agent(rank, failure.exitcode)
        sys.exit(failure.exitcode if failure.exitcode > 0 else 1)
    except SignalException as exc:
        sys.exit(128 + int(exc.sigval))
