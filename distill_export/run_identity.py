"""Which run a run directory's files belong to, and which data its stages read (a mixin of RunDir).

state.json holds a run_id made when the run is claimed, also written into report.json: a
report.json copied in from another run is refused, naming it (twentieth audit B7: it was blamed
on student.pt, which had not changed, and the advice given, re-running distill, kept the foreign
record's teacher section and timings).

state.json also holds the sha256 of the manifest the run read. A stage that reads the data again
after the teacher stage (distill, tune, export, `run --resume`) refuses a manifest changed since
(B3: boxes moved after the teacher was trained and scored; the report put the teacher's mAP on the
old boxes beside the student's on the new). Built-in sources (avdigits, moving_digits, ...) are
made by the code from the seed and have no file to hash; the files a manifest names (images,
audio) are not hashed here (the teacher cache checks the inputs it serves).

And it holds the sha256 of report.json as the product last wrote it (record_sha256). A report.json
that is not that file was changed by hand: its numbers are shown as the file says, never as
measured without saying so. The mark (record_edited) stays once a stage has written over such a
file, so a later write does not make the edit look measured (fifty-fifth audit B4-B8: a tune
decision, a recommendation or an export's accuracy edited in report.json was rendered as measured).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from distill_export.errors import ConfigError
from distill_export.stage_graph import PARITY_FILE, STATE_FILE, TEACHER_PARITY_FILE

# the files export writes for validate, and the state.json key of each one's sha256
PARITY_DIGESTS = {PARITY_FILE: "parity_sha256", TEACHER_PARITY_FILE: "teacher_parity_sha256"}


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


class RunIdentity:
    def _set_state(self, **keys) -> None:
        from distill_export.files import write_json

        if self.file(STATE_FILE).exists():
            write_json(self.file(STATE_FILE), {**self._state(), **keys})

    def _own_record(self) -> tuple:
        """store.load of report.json, refused when its run_id is not state.json's (runs made
        before run_id was kept have none: not checked)."""
        from distill_export.record import store

        loaded = store.load(self.file("report.json"))
        ours, theirs = self._state().get("run_id"), loaded[0].get("run_id")
        present = self.file("report.json").exists()  # a missing one: the commands say so in their words
        if ours and present and theirs != ours:  # a record without one, beside a state that has one, is not ours either (B7)
            which = (f"its run_id {str(theirs)[:40]!r} is not this run's {ours!r}, in state.json" if theirs else
                     f"it has no run_id, where this run's state.json has {ours!r}")
            raise ConfigError(f"{self.file('report.json')} is from another run ({which}): restore this run's "
                              "report.json, or start a new run with `--out NEW`")
        return loaded

    def _record_digest(self) -> str | None:
        from distill_export.files import sha256_file

        path = self.file("report.json")
        return sha256_file(path) if path.is_file() else None

    def record_edited(self) -> str | None:
        """Why report.json is not (only) what the product wrote, or None: changed since its last
        write, or changed before a write that kept the edit. Runs made before the digest: None."""
        state = self._state()
        if state.get("record_edited"):
            return state["record_edited"]
        recorded = state.get("record_sha256")
        if recorded and self._record_digest() not in (None, recorded):
            return "changed after distill-export last wrote it"
        return None

    def write_record(self, write) -> object:
        """write() writes report.json; its digest goes to state.json with it, Ctrl-C and SIGTERM held
        between the two (a kill there would make the product's own write look like an edit)."""
        import time

        from distill_export import interrupts

        with interrupts.deferred():
            edited = self.record_edited()
            result = write()
            mark = {"record_edited": f"{edited}; found {time.strftime('%Y-%m-%d %H:%M')}"} if edited and \
                not self._state().get("record_edited") else {}
            self._set_state(record_sha256=self._record_digest(), **mark)
        return result

    def record_data(self, source: str, annotations: str = "") -> None:
        """The sha256 of the manifest (and of its COCO annotations file), as the stages about to
        run read them."""
        from distill_export.files import sha256_file

        if Path(source).is_file():
            state = {"source": source, "sha256": sha256_file(source)}
            if (file := _annotations_file(source, annotations)) is not None and file.is_file():
                state["annotations"] = {"path": str(file), "sha256": sha256_file(file)}
            self._set_state(data=state)

    def check_same_data(self, source: str, annotations: str = "") -> None:
        """Refuse a manifest (or data.annotations file) changed since the teacher stage read it,
        done or stopped midway: its epoch checkpoints were trained on the rows of before
        (twenty-first audit B2; the boxes of a COCO file, twenty-fifth). Nothing to check for a
        built-in source or a run made before the hash was kept."""
        recorded = self._state().get("data")
        if not isinstance(recorded, dict) or recorded.get("source") != source:
            return
        if not Path(source).is_file():  # config.yaml keeps the path as given: relative to where the run began
            where = "" if Path(source).is_absolute() else (" from this folder: config.yaml names it relative to the "
                                                            "folder the run was made in, so run the command from there")
            raise ConfigError(f"{self.path}: its manifest {source} does not exist{where} (or restore the manifest)")
        self._same_file(Path(source), recorded.get("sha256"), "manifest")
        kept = recorded.get("annotations")
        if isinstance(kept, dict) and (file := _annotations_file(source, annotations)) is not None:
            if not file.is_file():
                raise ConfigError(f"{self.path}: its annotations file {file} (data.annotations) does not exist; "
                                  "restore it")
            self._same_file(file, kept.get("sha256"), "annotations file")

    def _same_file(self, file: Path, recorded, what: str) -> None:
        from distill_export.files import sha256_file

        now = sha256_file(file)
        if now != recorded:
            raise ConfigError(f"{self.path}: its {what} {file} changed after the teacher stage read it (sha256 "
                              f"{now[:12]}..., was {str(recorded)[:12]}...): the teacher was trained and "
                              "scored on the rows and labels of before, so the run would mix two datasets; restore "
                              f"the {what}, or start a new run with `--out NEW`")


    def record_outputs(self, stage: str) -> None:
        """After export: the parity files' sha256 (validate refuses a file changed since: an array
        edited, added or removed was blamed on student.onnx, twenty-sixth and -seventh audits, and
        on teacher.onnx, the seventieth's B1, B2)."""
        from distill_export.files import sha256_file

        if stage != "export":
            return
        for name, key in PARITY_DIGESTS.items():
            if self.file(name).is_file():
                self._set_state(**{key: sha256_file(self.file(name))})

    def check_parity_file(self, path: Path) -> None:
        """`path` (the run's parity_data.npz or teacher_parity_data.npz) is the file export wrote,
        when export recorded it."""
        from distill_export.errors import DataError
        from distill_export.files import sha256_file

        recorded = self._state().get(PARITY_DIGESTS.get(path.name, "parity_sha256"))
        if recorded and path.is_file() and sha256_file(path) != recorded:
            raise DataError(f"{path} changed after export (it is not the file export wrote: an array edited, added "
                            "or removed); re-run `distill-export export`")


def _annotations_file(source: str, annotations: str) -> Path | None:
    """data.annotations as the manifest reader resolves it: relative to the manifest's folder."""
    if not annotations:
        return None
    file = Path(annotations).expanduser()
    return file if file.is_absolute() else Path(source).parent / file
