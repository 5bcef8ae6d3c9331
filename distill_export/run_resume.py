"""`run --resume`: which run can be continued, what is reused, and the one line that says so.
A mixin of RunDir (rundir.py), which gives it stages(), missing_stages() and checkpoint_path()."""

from __future__ import annotations

from pathlib import Path

from distill_export.errors import ConfigError
from distill_export.files import refuse_special_run_files
from distill_export.stage_graph import RUN_STAGES, STAGE_CHECKPOINTS, _stale_why


class RunResume:
    @classmethod
    def resumable(cls, path: str | Path) -> "RunResume":  # a RunDir
        """A run that `run --resume` can continue: one made by `run`, with unfinished stages."""
        path = Path(path)
        if not path.is_dir():
            what = "is a file, not a run directory" if path.exists() else "no such run directory"
            raise ConfigError(f"--resume {path}: {what}")
        refuse_special_run_files(path)  # a FIFO or a folder in place of a run file is no missing file
        if not (path / "report.json").is_file():
            raise ConfigError(f"--resume {path} is not a run directory (no report.json)")
        run = cls(path)
        stages = run.stages()
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume {path}: the run was stopped before it wrote config.yaml, so there is "
                              "nothing to resume; start a new run (`distill-export run --out NEW`)")
        if stages is None:
            raise ConfigError(f"--resume {path}: the run does not record its stages (made by an older version); "
                              "start a new run")
        if not run.missing_stages(RUN_STAGES) and not run.outdated_stage():  # outdated: stale_if_outdated
            raise ConfigError(f"--resume {path}: the run already finished (every stage is done); "
                              f"its report is {path / 'report.md'}")
        return run

    def resume_plan(self) -> tuple[list[str], list[str]]:
        """(stages reused, stages to run): the done prefix is reused, the rest runs in order."""
        missing = self.missing_stages(RUN_STAGES)
        first = RUN_STAGES.index(missing[0]) if missing else len(RUN_STAGES)
        return list(RUN_STAGES[:first]), list(RUN_STAGES[first:])

    def resume_summary(self, restarts: dict[str, str] | None = None, tunes: bool = False) -> str:
        """One line: what is reused, where training continues, what runs after. `restarts`:
        {checkpoint label: why} for checkpoints the training will not continue (launch.resume_restarts):
        those are said to restart from epoch 1, never to continue. tunes: the run searches with
        `run --tune` before distilling (said whether its search is reused or runs again)."""
        from distill_export.train import checkpoint_progress

        restarts = restarts or {}
        reused, todo = self.resume_plan()
        parts = [f"resuming {self.path}:", f"{', '.join(reused)} done (reused);" if reused else "no stage done;"]
        if todo:
            found, again = [], []
            for label in STAGE_CHECKPOINTS.get(todo[0], ()):
                progress = checkpoint_progress(self.checkpoint_path(label)) if self.checkpoint_path(label).is_file() else None
                if label in restarts:
                    at = f" at epoch {progress[0]}/{progress[1]}" if progress else ""
                    again.append(f"{label}{at} restarts from epoch 1: {restarts[label]}")
                elif progress:
                    found.append(f"{label} at epoch {progress[0]}/{progress[1]}")
            where = f" from checkpoints ({', '.join(found)})" if found else ""
            where += f" ({'; '.join(again)})" if again else ""
            stages = self.stages() or {}
            stale = [s for s in todo if stages.get(s, {}).get("status") == "stale"]
            parts.append(f"running {todo[0]}{where}" + (f", then {', '.join(todo[1:])}" if todo[1:] else "")
                         + (f" ({', '.join(stale)} stale: {_stale_why(stages[stale[0]], 'them')})" if stale else ""))
            if tunes and todo[0] == "distill":  # 68th audit A1: an interrupted search started over unsaid
                searched = self.file("tune.json").is_file() and self.file("tuned.yaml").is_file()
                parts.append("(the run --tune choice is reused from tune.json)" if searched else
                             "(the run --tune search runs from its first trial: a search stopped before it "
                             "finished keeps no trials)")
        return " ".join(parts)
