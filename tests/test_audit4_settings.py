"""The fourth audit's inputs and settings (issue 24: B3-B7). Each is refused up front in one line,
exit 2, naming the thing, with no run folder made and no file changed; none needs a run:
- B3: a NUL byte in a path (a manifest's image cell, a config's path key) was a ValueError
  traceback; now a bad row (skipped with --skip-bad-rows) or one line naming the key;
- B4: --teacher-epochs with a loaded teacher when no teacher trains (no self-training control,
  one round); with the control on, its teacher reads it, so it is accepted;
- B5: --temperature / --alpha / --beta that no term of the objective reads;
- B6: --method over a --config's distill.terms: the flag wins (the preset runs and is recorded);
  --alpha with those terms (no --method) is refused by B5's rule;
- B7: --mix (or distill.mix in --config) with --tune-search mix, and --teacher-fusion with
  --tune-search fusion: the search would replace the user's setting."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from _byo_fixtures import make_manifest, read_rows, write_rows
from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.cli.options import load
from distill_export.errors import ConfigError

runner = CliRunner()
TEACHER = "torch.nn:Identity"  # a factory teacher: loaded, never trained, and nothing is imported to refuse it


def _only_error(result) -> str:
    """Exit 2, no traceback, exactly one `error:` line (the loader's data note aside, which -q keeps)."""
    text = result.output or ""
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip() and "held decoded" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ----- B3: a NUL byte in a path ---------------------------------------------------------------
def _nul_manifest(root, fmt: str):
    """The byo manifest (image + text) with row 3's image cell `img/...\\0.png`: CSV line 5, JSONL line 4."""
    clean = make_manifest(root, fmt=fmt, modalities=("image", "text"))
    rows = read_rows(clean) if fmt == "csv" else [json.loads(ln) for ln in clean.read_text().splitlines()]
    rows[3]["image"] = rows[3]["image"].replace(".png", "\0.png")
    return write_rows(root / f"nul.{fmt}", rows), {"csv": 5, "jsonl": 4}[fmt]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_b3_a_nul_byte_in_an_image_cell_is_a_bad_row_named_by_its_line(tmp_path, fmt):
    manifest, line_no = _nul_manifest(tmp_path / "data", fmt)
    before, out = snapshot(tmp_path), tmp_path / "tt"
    line = _only_error(runner.invoke(app, ["train-teacher", "--data", str(manifest), "--out", str(out), "-q",
                                           "--teacher-epochs", "1", "--label-fraction", "1.0"]))
    assert line.startswith(f"error: {manifest}:{line_no}: bad row: image path 'img/cat_3\\x00.png' contains a NUL "
                           "byte"), line
    assert "--skip-bad-rows" in line and snapshot(tmp_path) == before and not out.exists()


def test_b3_with_skip_bad_rows_the_nul_row_is_skipped_with_its_reason(tmp_path):
    from distill_export.config import DataConfig
    from distill_export.data.manifest import build_manifest_dataset

    manifest, line_no = _nul_manifest(tmp_path / "data", "csv")
    data = build_manifest_dataset(DataConfig(source=str(manifest), skip_bad_rows=True, label_fraction=1.0), seed=0)
    clean = build_manifest_dataset(DataConfig(source=str(tmp_path / "data" / "manifest.csv"), label_fraction=1.0),
                                   seed=0)
    assert len(data.train) == len(clean.train) - 1  # row 3 (cat_3) is a training row


def test_b3_nproc_refuses_the_nul_row_before_torchrun(tmp_path):
    manifest, line_no = _nul_manifest(tmp_path / "data", "csv")
    before, out = snapshot(tmp_path), tmp_path / "r"
    line = _only_error(runner.invoke(app, ["run", "--nproc", "2", "--data", str(manifest), "--out", str(out),
                                           "-q", "--label-fraction", "1.0"]))
    assert line.startswith(f"error: {manifest}:{line_no}: bad row: image path"), line
    assert "NUL byte" in line and snapshot(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("yaml_text,command,key", [
    ('student: {init_weights: "R/student\\0.pt"}\n', "run", "student.init_weights"),
    ('out: "o\\0x"\n', "train-teacher", "out"),
    ('data: {source: "md/base\\0.csv"}\n', "train-teacher", "data.source"),
    ('teacher: {path: "t\\0.pt"}\n', "run", "teacher.path"),
])
def test_b3_a_nul_byte_in_a_config_path_is_one_line_naming_the_key(tmp_path, yaml_text, command, key):
    config = tmp_path / "nul.yaml"
    config.write_text(yaml_text)
    before = snapshot(tmp_path)
    extra = [] if key == "out" else ["--out", str(tmp_path / "y")]
    line = one_line_error(runner.invoke(app, [command, "--config", str(config), "-q", *extra]), 2)
    assert line.startswith(f"error: {key} '") and "\\x00" in line and "contains a NUL byte" in line, line
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["nul.yaml"]


def test_b3_a_lone_surrogate_is_refused_too_and_a_plain_unicode_path_is_not():
    from distill_export.files import unusable_path

    assert "cannot write" in unusable_path("img/\ud800.png")
    assert unusable_path("img/ünï cödé.png") is None and unusable_path("img/\udcff.png") is None  # surrogateescape


# ----- B4: --teacher-epochs with a loaded teacher -------------------------------------------
@pytest.mark.parametrize("command", ["run", "train-teacher"])
def test_b4_teacher_epochs_with_a_loaded_teacher_and_nothing_to_train_is_refused(tmp_path, command):
    config = tmp_path / "c.yaml"
    config.write_text("distill: {self_training_control: false}\n")
    before, out = snapshot(tmp_path), tmp_path / "f2"
    line = one_line_error(runner.invoke(app, [command, "--config", str(config), "--teacher", TEACHER,
                                              "--teacher-epochs", "5", "--out", str(out), "-q"]), 2)
    assert line == (f"error: --teacher-epochs 5 (teacher.epochs) cannot apply: --teacher {TEACHER} is loaded, not "
                    "trained, and no other teacher trains here (the self-training control is off and distill.rounds "
                    "is 1); drop --teacher-epochs (or teacher.epochs from --config)"), line
    assert snapshot(tmp_path) == before and not out.exists()


def test_b4_what_counts_is_the_users_setting_and_a_teacher_that_still_trains(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("teacher: {epochs: 3}\ndistill: {self_training_control: false}\n")
    with pytest.raises(ConfigError, match=r"--teacher-epochs 3 \(teacher.epochs\) cannot apply"):
        load(None, config, {"teacher.path": TEACHER})  # set in --config counts
    quiet = tmp_path / "q.yaml"
    quiet.write_text("distill: {self_training_control: false}\n")
    assert load(None, quiet, {"teacher.path": TEACHER}).teacher.path == TEACHER  # the recipe's epochs do not
    # the demo recipe's self-training control trains an image-only teacher with teacher.epochs;
    # from round 2 the re-fitted experts read it too: then the flag applies and is recorded
    assert load(None, None, {"teacher.path": TEACHER, "teacher.epochs": 5}).teacher.epochs == 5
    rounds = load(None, quiet, {"teacher.path": TEACHER, "teacher.epochs": 5, "distill.rounds": 2})
    assert rounds.teacher.epochs == 5


# ----- B5: a temperature / alpha / beta no term reads ---------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["-T", "8", "--method", "pseudo_label"],
     "error: --temperature 8 sets distill.temperature, but --method pseudo_label (ce, pseudo_label) does not read "
     "it: no term of it takes a temperature; drop --temperature or choose another method"),
    (["--alpha", "0.3", "--method", "labels_only"],
     "error: --alpha 0.3 sets distill.alpha, but --method labels_only (ce) does not read it: it has no "
     "distillation term for ce to share the weight with; drop --alpha or choose another method"),
    (["-T", "2"],  # the demo recipe's method, pseudo_label, named as the config's
     "error: --temperature 2 sets distill.temperature, but distill.method pseudo_label (ce, pseudo_label) does not "
     "read it: no term of it takes a temperature; drop --temperature or choose another method"),
])
def test_b5_a_setting_no_term_of_the_method_reads_is_refused(tmp_path, flags, message):
    before, out = snapshot(tmp_path), tmp_path / "r"
    assert one_line_error(runner.invoke(app, ["run", "--out", str(out), "-q", *flags]), 2) == message
    assert snapshot(tmp_path) == before and not out.exists()


def test_b5_distill_on_a_run_refuses_it_too(tmp_path, monkeypatch):
    """`distill RUN -T 8 --method pseudo_label`: the run's config.yaml and report untouched."""
    from distill_export.config import load_config
    from distill_export.rundir import RunDir

    class FakeRun:  # the run's config, then the flags on it (launch.open_run), before any lock or stage
        def load_config(self):
            return load_config("avdigits", None, {})

        def written_config(self):  # a run made before hand edits of config.yaml were checked
            return None

        def check_same_data(self, source, annotations=""):  # a built-in source: no manifest to hash
            return None

        def stages(self):  # nothing recorded done: no flag changes what a stage ran with
            return {}

    monkeypatch.setattr(RunDir, "existing", classmethod(lambda cls, path: FakeRun()))
    line = one_line_error(runner.invoke(app, ["distill", str(tmp_path), "-T", "8", "--method", "pseudo_label", "-q"]))
    assert line.startswith("error: --temperature 8 sets distill.temperature, but --method pseudo_label"), line
    assert list(tmp_path.iterdir()) == []


def test_b5_a_setting_the_objective_reads_is_accepted():
    assert load(None, None, {"distill.temperature": 8.0, "distill.method": "hinton"}).distill.temperature == 8.0
    assert load(None, None, {"distill.alpha": 0.3}).distill.alpha == 0.3  # pseudo_label: ce shares with it
    assert load(None, None, {"distill.beta": 0.5, "distill.method": "labels_only"}).distill.beta == 0.5  # feature


# ----- B6: --method over a config's distill.terms -------------------------------------------
TERMS = "distill:\n  terms:\n    - {name: ce, weight: 0.5}\n    - {name: kd, weight: 0.5}\n"


def test_b6_method_overrides_the_configs_terms_and_alpha_then_applies(tmp_path):
    from distill_export.methods import term_specs

    config = tmp_path / "terms.yaml"
    config.write_text(TERMS)
    cfg = load(None, config, {"distill.method": "dkd", "distill.alpha": 0.9})
    assert cfg.distill.method == "dkd" and cfg.distill.terms == []  # config.yaml and the report: dkd ran
    assert [(s.name, round(s.weight, 6)) for s in term_specs(cfg.distill)] == [("ce", 0.9), ("dkd", 0.1)]
    kept = load(None, config, {})  # without --method the config's terms run, as documented
    assert [t["name"] for t in kept.distill.terms] == ["ce", "kd"]


def test_b6_method_overrides_a_runs_terms_for_distill(tmp_path, monkeypatch):
    from distill_export.config import load_config
    from distill_export.launch import open_run
    from distill_export.rundir import RunDir

    saved = load_config("avdigits", None, {"distill.method": "hinton"})
    saved.distill.terms = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]  # e.g. a tuned run
    fake = type("FakeRun", (), {"load_config": lambda self: saved})
    monkeypatch.setattr(RunDir, "existing", classmethod(lambda cls, path: fake()))
    _, cfg = open_run(tmp_path, {"distill.method": "dist"})
    assert cfg.distill.method == "dist" and cfg.distill.terms == []


def test_b6_alpha_with_the_configs_terms_and_no_method_is_refused(tmp_path):
    config = tmp_path / "terms.yaml"
    config.write_text(TERMS)
    before, out = snapshot(tmp_path), tmp_path / "f12"
    line = one_line_error(runner.invoke(app, ["run", "--config", str(config), "--alpha", "0.9", "--out", str(out),
                                              "-q"]), 2)
    assert line == ("error: --alpha 0.9 sets distill.alpha, but distill.terms (ce, kd) lists the objective with its "
                    "own weights, so distill.alpha is not read; drop --alpha, or pass --method to run a preset "
                    "instead of distill.terms"), line
    assert snapshot(tmp_path) == before and not out.exists()


def test_b6_temperature_with_terms_is_refused_only_when_every_term_sets_its_own(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("distill:\n  terms:\n    - {name: ce, weight: 0.5}\n    - {name: kd, weight: 0.5, temperature: 2}\n")
    with pytest.raises(ConfigError, match=r"every term of distill.terms \(ce, kd\) that takes a temperature sets"):
        load(None, own, {"distill.temperature": 8.0})
    plain = tmp_path / "plain.yaml"
    plain.write_text(TERMS)  # kd without its own temperature takes distill.temperature
    assert load(None, plain, {"distill.temperature": 8.0}).distill.temperature == 8.0


# ----- B7: a setting the search would replace -----------------------------------------------
@pytest.mark.parametrize("flags,start", [
    (["--tune-search", "terms,mix", "--mix", "cutmix"],
     "error: --mix cutmix (distill.mix) is set, but --tune-search includes mix (distill.tune_search), which picks "
     "the batch mixing and its strength and would replace it; drop --mix (or distill.mix from --config), or drop "
     "mix from --tune-search"),
    (["--tune-search", "terms,fusion", "--teacher-fusion", "late"],
     "error: --teacher-fusion late (teacher.fusion) is set, but --tune-search includes fusion"),
])
def test_b7_a_searched_setting_the_user_set_is_refused(tmp_path, flags, start):
    before, out = snapshot(tmp_path), tmp_path / "x5"
    line = one_line_error(runner.invoke(app, ["run", "--out", str(out), "-q", "--tune", "1", *flags]), 2)
    assert line.startswith(start), line
    assert snapshot(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("text", ["distill: {mix: cutmix}\n", "distill.mix_alpha: 0.5\n"])
def test_b7_the_mixing_in_config_counts_and_the_recipes_does_not(tmp_path, text):
    config = tmp_path / "mix.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"distill.mix(_alpha)?\)? is set, but --tune-search includes mix"):
        load(None, config, {"distill.tune_trials": 1, "distill.tune_search": "terms,mix"})
    searched = load(None, None, {"distill.tune_trials": 1, "distill.tune_search": "terms,mix"})
    assert searched.distill.mix == "none"  # the recipe's mixing: the search's starting point, not the user's
