"""The run directory: where every stage reads its inputs and writes its outputs.

Layout: config.yaml, teacher.pt, baseline.pt, student.pt, student*.onnx, report.json (the typed
run record, distill_export/record: each stage writes its own sections through `update_report`,
the one writer), state.json (stage state), report.md, report.html, plots/.

Stage state lives in state.json. The pieces of RunDir: stage_graph.py (how stages depend on each
other and go stale), run_identity.py (the run's id and its data's hash), run_outputs.py (outputs
changed since their stage), run_resume.py (`run --resume`), run_guard.py (the lock and the
transaction). A run is claimed by creating report.json exclusively (O_EXCL), so two concurrent
`run --out X` cannot both win; the stage commands read the state to know which stages finished.
config.yaml is written by a stage command only after it succeeds, and `transaction()` puts the
directory back as it was when a stage command fails.

Training stages write a checkpoint per epoch under checkpoints/ (train.Checkpoint); a stage's
checkpoints are deleted once it is recorded done. `run --resume` (`RunDir.resumable`) skips the
stages recorded done and continues the first unfinished one from its checkpoints.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from distill_export.config import RunConfig, config_from_dict
from distill_export.flag_checks import check_gates_of_task
from distill_export.errors import ConfigError
from distill_export.files import ensure_writable_dir, refuse_special_run_files, write_json, write_text
from distill_export.interrupts import raise_pending
from distill_export.output_paths import check_free, check_new_file, check_output  # noqa: F401
from distill_export.record import SCHEMA_VERSION, RunRecord, store
from distill_export.stage_graph import (NEXT_COMMAND, BACKUP_DIR, CHECKPOINT_DIR, DEPENDENTS, RUN_STAGES,  # noqa: F401
    STAGE_CHECKPOINTS, STAGE_FILES, STAGE_SECTIONS, STAGE_TIMINGS, STATE_FILE, _stale_why, checked_stages)  # tables imported from here
from distill_export.run_guard import RunGuard
from distill_export.run_identity import RunIdentity, new_run_id
from distill_export.run_resume import RunResume
from distill_export.run_outputs import PARITY_FILE, RunOutputs  # noqa: F401  (PARITY_FILE is imported from here)


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


class RunClaimed(ConfigError):
    """The directory was claimed by another run between our check and our claim."""


CLAIM_GRACE_S = 10.0  # a claim younger than this, still without its config.yaml, is being written


def _claimed_just_now(target: Path) -> bool:
    """Another process has just claimed `target` (_claim's report.json, made with O_EXCL) and has not
    written config.yaml yet: a race lost, said as such, not as an abandoned start."""
    try:
        age = time.time() - (target / "report.json").stat().st_mtime
    except OSError:
        return False
    return age < CLAIM_GRACE_S and not (target / "config.yaml").exists()


@dataclass
class RunDir(RunOutputs, RunIdentity, RunResume, RunGuard):
    path: Path

    @classmethod
    def create(cls, path: str | Path | None, fresh: bool = False, stages: tuple[str, ...] = ()) -> "RunDir":
        """fresh: claim a new or empty folder atomically (refusing a run or a folder of other
        files); `stages` are the stages this run means to finish, recorded as pending."""
        if not fresh:
            return cls(ensure_writable_dir(Path(path or default_run_dir())))
        if path is None:  # runs/<timestamp>, -2, -3, ... if another run took this second
            base = default_run_dir()
            for i in range(1, 100):
                candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
                if candidate.exists():  # taken earlier this second: check_output would refuse it
                    continue
                try:
                    return cls._claim(candidate, stages)
                except RunClaimed:
                    continue
            raise ConfigError(f"{base} and {base.name}-2 ... {base.name}-99 are all taken; choose a --out")
        return cls._claim(Path(path), stages)

    @classmethod
    def _claim(cls, target: Path, stages: tuple[str, ...]) -> "RunDir":
        try:
            check_output(target, folder=True)  # never a run, a user's folder, or inside a run
        except ConfigError:
            if _claimed_just_now(target):  # not "a run that never wrote its config.yaml": it is writing it
                raise RunClaimed(f"--out {target} already holds a run (another run claimed it just now); "
                                 "choose a new --out") from None
            raise
        try:
            target.mkdir(parents=True, exist_ok=True)
            fd = os.open(target / "report.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            if target.is_dir():
                raise RunClaimed(f"--out {target} already holds a run (another run claimed it just now); "
                                 "choose a new --out") from None
            raise ConfigError(f"--out {target} is a file, not a folder; choose another --out") from None
        except OSError as exc:
            raise ConfigError(f"--out {target} cannot be written: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"schema_version": SCHEMA_VERSION, "run_id": (run_id := new_run_id())}, indent=2) + "\n")
        run = cls(target)
        run.set_stages({s: {"status": "pending"} for s in stages})
        run._set_state(run_id=run_id, record_sha256=run._record_digest())  # from the first byte (57th audit)
        return run

    def discard(self) -> None:
        """Remove a run this process claimed and that finished no stage (nothing in it is the user's)."""
        if any(v.get("status") == "done" for v in (self.stages() or {}).values()):
            return
        shutil.rmtree(self.path, ignore_errors=True)

    # ----- stage state -------------------------------------------------------------------------
    def stages(self) -> dict | None:
        """The stage record, or None for a run made before stages were recorded."""
        if self.file(STATE_FILE).exists():  # every version that wrote state.json wrote its stages
            return checked_stages(self._state().get("stages"), self.file(STATE_FILE))
        # made before state.json: the state is still in report.json (record/migrate.py)
        stages = store.read_json(self.file("report.json")).get("stages")
        return None if stages is None else checked_stages(stages, self.file("report.json"))

    def set_stages(self, stages: dict) -> None:  # the other keys (written_config) kept
        write_json(self.file(STATE_FILE), {**self._state(), "stages": stages})

    def mark_stage(self, name: str) -> None:
        raise_pending()  # a Ctrl-C swallowed inside the stage (a weakref callback) leaves it unfinished
        stages = dict(self.stages() or {})
        stages[name] = {"status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.set_stages(stages)
        self.record_outputs(name)

    def begin_stage(self, name: str, config: RunConfig | None = None) -> list[str]:
        """`name` starts (again): it is pending until it finishes, and every stage made from its
        output (DEPENDENTS) that was recorded done becomes stale; what those stages and this one
        wrote into report.json, and the reports rendered from it, are dropped (they describe the
        artifacts of before). A stage command that needs a stale stage is refused (require_stages);
        `run --resume` runs it again. A training stage records the config it starts with, so a
        resume can say which settings changed since its checkpoints were written. Returns the
        stages made stale."""
        raise_pending()  # nor does a swallowed one let the next stage start (66th audit B3)
        stages = self.stages()
        if stages is None or name not in RUN_STAGES:
            return []
        stale = [s for s in DEPENDENTS[name] if stages.get(s, {}).get("status") == "done"]
        entry = {"status": "pending"}
        if config is not None and name in STAGE_CHECKPOINTS:
            entry["config"] = config.to_dict()
        self.set_stages({**stages, name: entry, **{s: {"status": "stale", "after": name} for s in stale}})
        self._forget([name, *stale])
        if name == "train_teacher" and config is not None:  # later stages refuse a manifest changed since
            self.record_data(config.data.source, config.data.annotations)
        return stale

    def _forget(self, stages: list[str]) -> None:
        """Drop what `stages` wrote into report.json, and the files they rendered."""
        def drop(data: dict) -> dict:
            data = dict(data)
            for stage in stages:
                for section in STAGE_SECTIONS.get(stage, ()):
                    data.pop(section, None)
                if stage == "distill" and isinstance(data.get("metrics"), dict):
                    data["metrics"] = {k: v for k, v in data["metrics"].items() if k == "teacher"}
                if stage == "validate":  # parity results of exports that stay
                    for key in ("exports", "teacher_exports"):
                        if isinstance(data.get(key), dict):
                            data[key] = {f: {k: v for k, v in (e or {}).items() if k != "parity"}
                                         for f, e in data[key].items()}
                timed = STAGE_TIMINGS.get(stage, ())  # `run`'s total timed those too (46th audit T1)
                if isinstance(data.get("timings"), dict) and timed:
                    data["timings"] = {k: v for k, v in data["timings"].items() if k not in (*timed, "total")}
            return data

        self.write_record(lambda: store.rewrite(self.file("report.json"), drop))
        for stage in stages:
            for name in STAGE_FILES.get(stage, ()):
                path = self.file(name)
                if path.parent != self.path and (path.parent.is_symlink() or not path.parent.is_dir()):
                    continue  # plots/ as a link to a user's folder: never delete through it (report refuses it)
                path.unlink(missing_ok=True)

    # ----- training checkpoints and resume -----------------------------------------------------
    def checkpoint_path(self, label: str) -> Path:
        return self.path / CHECKPOINT_DIR / f"{label}.pt"

    def drop_checkpoints(self, stage: str) -> None:
        """Delete a finished stage's training checkpoints (and the folder once it is empty)."""
        folder = self.path / CHECKPOINT_DIR
        if not folder.is_dir():
            return
        for label in STAGE_CHECKPOINTS.get(stage, ()):
            self.checkpoint_path(label).unlink(missing_ok=True)
            for part in folder.glob(f"{label}.*.pt"):  # per-part checkpoints (a late-fusion teacher's experts)
                part.unlink(missing_ok=True)
            for tmp in folder.glob(f".{label}.pt.*.tmp"):  # left by a kill during a write
                tmp.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass  # another stage's checkpoints are still there

    def missing_stages(self, needed: tuple[str, ...] | None = None) -> list[str]:
        """Stages (planned ones, or `needed`) that have not finished; [] for an unrecorded run."""
        stages = self.stages()
        if stages is None:
            return []
        wanted = needed if needed is not None else tuple(s for s in stages if s != "report")
        return [s for s in wanted if stages.get(s, {}).get("status") != "done"]

    def require_stages(self, needed: tuple[str, ...] | None, command: str) -> None:
        """Refuse `command` unless `needed` (None: every planned stage) finished."""
        missing = self.missing_stages(needed)
        stages = self.stages() or {}
        stale = [s for s in missing if stages.get(s, {}).get("status") == "stale"]
        if stale and stale == missing:
            raise ConfigError(f"{self.path}: stage{'s' * (len(stale) > 1)} {', '.join(stale)} "
                              f"{'are' if len(stale) > 1 else 'is'} stale "
                              f"({_stale_why(stages[stale[0]], 'them' if len(stale) > 1 else 'it')}), "
                              f"so `{command}` cannot run; next: "
                              + NEXT_COMMAND[stale[0]].format(run=self.path)
                              + f" (or `distill-export run --resume {self.path}` to run every stale stage again)")
        if missing:
            hint = NEXT_COMMAND[missing[0]].format(run=self.path)
            raise ConfigError(f"{self.path} is unfinished: stage{'s' * (len(missing) > 1)} {', '.join(missing)} "
                              f"did not finish, so `{command}` cannot run; next: {hint}")
        self.require_current_outputs(needed, command)  # done, but its file is gone or student.pt changed

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        refuse_special_run_files(path)  # a FIFO or a folder in place of a run file is no missing file
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path} is not a run directory (no config.yaml); run `distill-export run` or `train-teacher` first")
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def require(self, name: str, stage: str) -> Path:
        p = self.file(name)
        if not p.exists():
            if stage == "train-teacher" and self.stages() is not None and self.file("config.yaml").is_file():
                # a `run` stopped in its teacher stage (config.yaml and its stage state are written
                # first): `run --resume` continues it from its checkpoints
                raise ConfigError(f"{p} is missing: the teacher stage of {self.path} never finished; continue it "
                                  f"with `distill-export run --resume {self.path}` (or start a new run with "
                                  "`distill-export run --out NEW`)")
            if stage == "train-teacher":  # a stage that makes a new run directory: it cannot be re-entered
                raise ConfigError(f"{p} is missing: the teacher stage of {self.path} never finished; "
                                  "start a new run (`distill-export run --out NEW` or `train-teacher --out NEW`)")
            raise ConfigError(f"{p} is missing; run `distill-export {stage} {self.path}` first")
        return p

    def save_config(self, config: RunConfig) -> None:
        write_text(self.file("config.yaml"), yaml.safe_dump(written := config.to_dict(), sort_keys=False))
        self.record_written_config(written)
        self.record_given_teacher_keys(config.given_keys)

    def load_config(self) -> RunConfig:
        from distill_export.config import read_yaml

        path = self.file("config.yaml")
        data = read_yaml(path, what="run config")  # bounded safe YAML; a corrupt file is named in one line
        try:
            config = config_from_dict(data)
            check_gates_of_task(config, data)  # another task's gate edited in: never read (46th audit G7)
            return config
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    # ----- the run record (report.json) ---------------------------------------------------------
    def load_report(self) -> dict:
        """report.json as JSON in the current schema (any older version migrated; {} if none)."""
        return self._own_record()[0]  # another run's report.json is refused (run_identity)

    def load_record(self) -> RunRecord:
        """report.json as the typed run record (record/models.py), any older version migrated."""
        return self._own_record()[1]

    def drop_report_sections(self, names: tuple[str, ...]) -> None:
        """Remove whole sections from report.json (e.g. a `tune` record that no longer describes the run)."""
        self.write_record(lambda: store.rewrite(self.file("report.json"),
                                                lambda data: {k: v for k, v in data.items() if k not in names}))

    def update_report(self, **sections) -> dict:
        """The one writer of report.json: merge top-level sections (dicts, lists or typed models;
        dict sections merge one level deep), check the result against the record's models and
        write it atomically. Returns the record as JSON."""
        return self._write(sections, replace=False)

    def replace_report(self, **sections) -> dict:
        """As update_report, but each section replaces the one on file (e.g. `recommended`)."""
        return self._write(sections, replace=True)

    def _write(self, sections: dict, replace: bool) -> dict:
        def keep_stages(stages: dict) -> None:  # an old report.json held the stage state
            if not self.file(STATE_FILE).exists():
                self.set_stages(stages)

        return self.write_record(lambda: store.write_sections(self.file("report.json"), sections, replace, keep_stages))[0]


def records_stage(name: str):
    """Decorate a pipeline stage(config, run, ...): when it returns, the run records `name` as done."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            run = next((a for a in (*args, *kwargs.values()) if isinstance(a, RunDir)), None)
            if run is not None:  # pending while it runs; the later stages done before are stale now
                run.begin_stage(name, next((a for a in (*args, *kwargs.values()) if isinstance(a, RunConfig)), None))
            result = fn(*args, **kwargs)
            if run is not None:
                run.mark_stage(name)
                run.drop_checkpoints(name)  # its artifacts are written: the training state is spent
            return result

        return wrapper

    return decorate
