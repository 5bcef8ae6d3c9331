"""One line for a failed `run --nproc N`: the ranks hand their errors to the launching process.

The launcher (distributed.launch_torchrun) puts a folder in the ranks' environment (ENV). A
rank whose command fails writes its one-line error there (rank<R>.json: message and exit code)
instead of printing it, and exits with that code; torchrun's agent (distributed.agent_main)
then stops the other ranks and writes which rank failed first and how (agent.json) instead of
its ChildFailedError traceback. The launcher prints one line from these files.

No torch here: cli/guard.py asks `collecting()` on every failure, also outside torchrun.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "DISTILL_EXPORT_RANK_ERRORS"
AGENT = "agent.json"


def collecting() -> bool:
    """True in a rank whose launcher collects the ranks' errors."""
    return bool(os.environ.get(ENV)) and "RANK" in os.environ


def _write(name: str, record: dict) -> None:
    folder = Path(os.environ[ENV])
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / name)  # the launcher never reads half a file


def write(message: str, code: int) -> bool:
    """This rank's one-line error for the launcher; False (nothing written) outside such a rank."""
    if not collecting():
        return False
    try:
        _write(f"rank{int(os.environ['RANK'])}.json", {"message": message, "code": int(code)})
    except (OSError, ValueError):
        return False  # the folder is gone (the launcher was killed): the caller prints it instead
    return True


def another_rank_failed(wait_s: float = 0.0) -> bool:
    """A rank other than this one has written its error (this rank's failure, e.g. a collective
    whose peer died, is then a consequence, not news). wait_s: how long to wait for that file:
    the peer's connection can close (its process group torn down) a moment before it writes."""
    import time

    if not collecting():
        return False
    mine, folder = f"rank{os.environ['RANK']}.json", Path(os.environ[ENV])
    deadline = time.monotonic() + wait_s
    while True:
        if any(p.name != mine for p in folder.glob("rank*.json")):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def write_agent(rank: int, exitcode: int) -> None:
    """torchrun's agent: the first rank that failed and its exit code (negative: the signal)."""
    _write(AGENT, {"rank": int(rank), "exitcode": int(exitcode)})


def summary(folder: Path, nproc: int, returncode: int) -> tuple[str, int]:
    """(one line, exit code) for a torchrun that ended with `returncode` != 0: the lowest rank's
    own error, else which rank died and how (its output, if any, is above)."""
    import signal

    errors = []
    for path in folder.glob("rank*.json"):
        try:
            record = json.loads(path.read_text())
            errors.append((int(path.stem[4:]), str(record["message"]), int(record["code"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if errors:
        rank, message, code = min(errors)
        return message, code
    try:
        agent = json.loads((folder / AGENT).read_text())
        rank, exitcode = int(agent["rank"]), int(agent["exitcode"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"torchrun failed with exit code {returncode} before the ranks reported an error; its output is above", 1
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory? the system's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"rank {rank} of {nproc} was killed by {name}{hint}", 1
    by_signal = {143: " (SIGTERM: it was terminated)", 130: " (SIGINT: it was interrupted)"}.get(exitcode, "")
    return f"rank {rank} of {nproc} failed with exit code {exitcode}{by_signal}; its output is above", 1
