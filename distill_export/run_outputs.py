"""The run directory's outputs checked against what its stages recorded (a mixin of RunDir):
a stage recorded done whose output file is gone, a student.pt that is not the checkpoint the
exports were made from, an artifact whose content is not what validate hashed (issue 24's
audits). Stage commands refuse in one line naming the file and the command that makes it again;
`run --resume` makes the stage and the ones after it stale and runs them again.

The methods use RunDir's file(), load_report(), load_config(), stages(), set_stages(), _forget()
and path.
"""

from __future__ import annotations

from pathlib import Path

from distill_export.errors import ConfigError
from distill_export.stage_graph import NEXT_COMMAND, DEPENDENTS, PARITY_FILE, RUN_STAGES, STATE_FILE, checked_state  # noqa: F401  (PARITY_FILE: imported from here)

# What distill writes and measures: its report numbers are of these files (files_sha256).
DISTILL_CHECKPOINTS = ("student.pt", "baseline.pt", "control_teacher.pt")


class RunOutputs:
    def changed_artifacts(self) -> list[Path]:
        """Exported files whose content is not what validate recorded (parity.artifact_sha256): a
        file replaced or removed by hand since, so its parity describes another file. Artifacts
        validated before hashes were recorded are unknown, not changed."""
        from distill_export.files import sha256_file

        report = self.load_report()
        changed = []
        for section in ("exports", "teacher_exports"):
            for art in (report.get(section) or {}).values():
                recorded = ((art or {}).get("parity") or {}).get("artifact_sha256")
                if not recorded or not art.get("path"):
                    continue
                file = self.file(art["path"])
                if not file.is_file() or sha256_file(file) != recorded:
                    changed.append(file)
        return changed

    def outdated_output(self, needed: tuple[str, ...] | None = None) -> tuple[str, Path, str] | None:
        """(stage, file, why) for the first stage recorded done (of `needed`, None: all) whose
        output is gone, or, for export, whose student.pt is not the checkpoint it was exported
        from: what is built on it would fail on a missing file or describe another student."""
        stages = self.stages() or {}
        for stage in needed if needed is not None else RUN_STAGES:
            if stages.get(stage, {}).get("status") != "done":
                continue
            for file in self._stage_outputs(stage):
                if not file.is_file():  # a FIFO or a folder in its place is said as such (35th audit A2)
                    return stage, file, "is missing" if not file.exists() else "is not a regular file"
            if stage == "train_teacher":
                if missing := self._loaded_teacher_missing():
                    return stage, missing, "is missing"
                changed = self._teacher_file_changed()
                if changed:
                    return stage, changed, "changed after train-teacher"
            changed = self._changed_after_distill() if stage == "distill" else None
            if changed:
                return stage, changed, "changed after distill"
            if stage == "export" and self._student_changed():
                if self._student_is_distills():  # seventeenth audit B3: it was the parity file that changed
                    return stage, self.file(PARITY_FILE), "is from another student.pt"
                return stage, self.file("student.pt"), "changed after export"
            if stage == "export" and self._teacher_changed():
                if changed := self._teacher_file_changed():  # not export's to fix (forty-fifth audit P15)
                    return "train_teacher", changed, "changed after train-teacher"
                return stage, self.file("teacher.pt"), "changed after export"
        return None

    def _stage_outputs(self, stage: str) -> list[Path]:
        if stage == "train_teacher":
            try:
                external = self.load_config().teacher.path
            except ConfigError:
                return []
            return [] if external else [self.file("teacher.pt")]
        if stage == "distill":
            return [self.file("student.pt")]
        if stage == "export":
            arts = (self.load_report().get("exports") or {}).values()
            return [self.file(a["path"]) for a in arts if (a or {}).get("path")] + [self.file(PARITY_FILE)]
        return []

    def _student_changed(self) -> bool:
        """student.pt differs from the checkpoint the exports were made from (export records its
        sha256 in parity_data.npz, with the reference logits it computed). Unknown: not changed."""
        import numpy as np

        from distill_export.files import sha256_file

        try:
            with np.load(self.file(PARITY_FILE)) as f:
                recorded = str(f["checkpoint_sha256"]) if "checkpoint_sha256" in f.files else ""
        except Exception:  # noqa: BLE001 - missing or unreadable (empty, not a zip): validate names it
            return False
        student = self.file("student.pt")
        return bool(recorded) and student.is_file() and sha256_file(student) != recorded

    def _state(self) -> dict:
        from distill_export.record import store

        if not self.file(STATE_FILE).exists():
            return {}
        return checked_state(store.read_json(self.file(STATE_FILE)), self.file(STATE_FILE))  # a dict: read_json

    def record_written_config(self, config: dict) -> None:
        """config.yaml as the product wrote it (state.json written_config): `run --resume` can tell
        a hand edit, and refuse one that changes what a stage already done ran with (seventeenth audit B2)."""
        from distill_export.files import write_json

        if self.file(STATE_FILE).exists():
            write_json(self.file(STATE_FILE), {**self._state(), "written_config": config})

    def record_given_teacher_keys(self, keys) -> None:
        """The loaded teacher's training settings the user gave (teacher.epochs, ...: read only by a
        teacher the run trains, the control's): a later distill that trains none refuses them (L5)."""
        from distill_export.files import write_json

        before = sorted(self.given_teacher_keys())
        given = sorted({*before, *(k for k in keys if k.startswith("teacher."))})
        if given != before and self.file(STATE_FILE).exists():
            write_json(self.file(STATE_FILE), {**self._state(), "given_teacher_keys": given})

    def given_teacher_keys(self) -> frozenset:
        return frozenset(self._state().get("given_teacher_keys") or ())  # a list of names: checked_state

    def written_config(self) -> dict | None:
        """The config the product last wrote to config.yaml; None for a run made before it was kept."""
        return self._state().get("written_config")  # a dict or None: checked_state

    def _student_is_distills(self) -> bool:
        """student.pt is the checkpoint distill measured (report.json distill.files_sha256)."""
        from distill_export.files import sha256_file

        recorded = ((self.load_report().get("distill") or {}).get("files_sha256") or {}).get("student.pt")
        student = self.file("student.pt")
        return bool(recorded) and student.is_file() and sha256_file(student) == recorded

    def _changed_after_distill(self) -> Path | None:
        """The first checkpoint distill wrote (student.pt, baseline.pt, control_teacher.pt) that
        is not what it measured (report.json distill.files_sha256; ninth audit B5: a student.pt
        copied over before export was exported beside the old student's accuracy; eleventh B5 the
        same for baseline.pt). Unknown (older runs, a file gone: is_missing names it): None."""
        from distill_export.files import sha256_file

        recorded = (self.load_report().get("distill") or {}).get("files_sha256") or {}
        for name in DISTILL_CHECKPOINTS:
            file = self.file(name)
            if recorded.get(name) and file.is_file() and sha256_file(file) != recorded[name]:
                return file
        return None

    def _teacher_file_changed(self) -> Path | None:
        """The teacher file (the run's teacher.pt or the --teacher it loaded) when its content is
        not what the teacher stage measured (report.json teacher.file_sha256; fifth audit ST4/ST5:
        `distill` used the new file while the record kept the old one's metrics). Unknown (a run
        made before the hash was recorded, a factory teacher, a missing file): None."""
        from distill_export.files import sha256_file

        recorded = (self.load_report().get("teacher") or {}).get("file_sha256")
        if not recorded:
            return None
        try:
            external = self.load_config().teacher.path
        except ConfigError:
            return None
        teacher = Path(external) if external else self.file("teacher.pt")
        return teacher if teacher.is_file() and sha256_file(teacher) != recorded else None

    def _loaded_teacher_missing(self) -> Path | None:
        """The --teacher file the teacher stage measured (report.json teacher.file_sha256), when it
        is gone: from another folder a relative one was only "checkpoint ... does not exist"."""
        if not (self.load_report().get("teacher") or {}).get("file_sha256"):
            return None
        try:
            external = self.load_config().teacher.path
        except ConfigError:
            return None
        return Path(external) if external and not Path(external).exists() else None

    def _teacher_changed(self) -> bool:
        """teacher.pt differs from the checkpoint the teacher's ONNX was exported from (export
        records its sha256 in report.json's teacher_exports): profile would time one teacher
        beside the other's accuracy. Unknown (older runs, a loaded teacher): not changed."""
        from distill_export.files import sha256_file

        recorded = ((self.load_report().get("teacher_exports") or {}).get("onnx") or {}).get("source_checkpoint_sha256")
        teacher = self.file("teacher.pt")
        return bool(recorded) and teacher.is_file() and sha256_file(teacher) != recorded

    def require_current_outputs(self, needed: tuple[str, ...] | None, command: str) -> None:
        """Refuse `command` when a stage it builds on lost its output or (export) was made from
        another student.pt; one line naming the file and the command that makes it again."""
        found = self.outdated_output(needed)
        if found and found[0] == "train_teacher" and not found[1].is_absolute() \
                and not found[1].is_relative_to(self.path):  # a relative --teacher: read from here (52nd F4, A5)
            what, then = (("does not exist there", "") if found[2] == "is missing" else
                          ("is not the file the teacher stage measured", " (or, if the file changed, re-run "
                           f"`distill-export run --resume {self.path}` there)"))
            raise ConfigError(f"{found[1]} (teacher.path, read from the current folder {Path.cwd()}) {what}, so "
                              f"`{command}` cannot run; run it from the folder the run was started in{then}")
        if found and found[0] == "train_teacher" and found[2] == "is missing" and found[1] != self.file("teacher.pt"):
            raise ConfigError(f"{found[1]} (teacher.path, the teacher this run was made with) is missing, so "
                              f"`{command}` cannot run; put it back, or start a new run")
        if found:
            stage, file, why = found
            made = {"is missing": f"the {stage} stage made it",
                    "is not a regular file": f"the {stage} stage made a file there",
                    "changed after train-teacher": "the teacher stage measured another file: the run would mix two "
                                                   "teachers",
                    "changed after distill": "the distill stage measured another checkpoint: the run would "
                                             "describe other weights",
                    "is from another student.pt": "its inputs and reference outputs were computed from another "
                                                  "checkpoint than this run's student.pt"}.get(why, "the exports were made from another checkpoint")
            raise ConfigError(f"{file} {why} ({made}), so `{command}` cannot run; "
                              f"re-run {NEXT_COMMAND[stage].format(run=self.path)}")

    def require_unchanged_artifacts(self, command: str) -> None:
        """Refuse `command`, which would report or rank by the recorded parity, when an artifact
        changed after validate (or student.pt after export); nothing is written."""
        self.require_current_outputs(("train_teacher", "distill", "export"), command)
        changed = self.changed_artifacts()
        if changed:
            what = "changed" if changed[0].is_file() else "was removed"
            raise ConfigError(f"{changed[0]} {what} after validate (its content is not what validate checked), "
                              f"so `{command}` would report the old parity; re-run `distill-export validate "
                              f"{self.path}`")

    def outdated_stage(self) -> tuple[str, str] | None:
        """(first stage `run --resume` must run again, why): a done stage lost its output, the
        student changed after export, or an artifact changed after validate."""
        found = self.outdated_output(("train_teacher", "distill", "export"))
        if found:
            file = found[1].relative_to(self.path) if found[1].is_relative_to(self.path) else found[1]  # --teacher
            return found[0], f"{file} {found[2]}"
        stages = self.stages() or {}
        changed = self.changed_artifacts() if stages.get("validate", {}).get("status") == "done" else []
        return ("validate", f"{changed[0].relative_to(self.path)} changed after validate") if changed else None

    def stale_if_outdated(self) -> str | None:
        """`run --resume`: the outdated stage and the stages built on it become stale (what they
        wrote is dropped, as begin_stage does), so the resume runs them again. Returns why."""
        found = self.outdated_stage()
        if not found:
            return None
        stage, why = found
        stages = self.stages() or {}
        stale = [stage, *(s for s in DEPENDENTS[stage] if stages.get(s, {}).get("status") == "done")]
        self.set_stages({**stages, **{s: {"status": "stale", "after": stage, "why": why} for s in stale}})
        self._forget(stale)
        return why
