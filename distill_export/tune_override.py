"""A `run --tune` record that a later distill overrides: `distill RUN --method dist` after the
search chose labels only kept report.json's `tune` section, and report.md said "Objective chosen by
run --tune: labels only" beside the dist objective that ran (68th audit B1)."""

from __future__ import annotations

import copy


def overridden(config, decision: dict) -> str | None:
    """The setting of `config` that differs from what `run --tune` chose (decision, from
    report.json), or None when the distill stage runs the choice (a resumed run, a re-run with
    the same settings)."""
    from distill_export.methods import term_specs

    chosen = copy.deepcopy(config)
    chosen.distill.terms = decision.get("terms") or []
    if [(s.name, s.weight, s.params) for s in term_specs(chosen.distill)] != \
            [(s.name, s.weight, s.params) for s in term_specs(config.distill)]:
        return "the objective"
    if decision.get("rounds") and config.distill.rounds != decision["rounds"]:
        return "distill.rounds"
    if decision.get("teacher_fusion") and config.teacher.fusion != decision["teacher_fusion"]:
        return "teacher.fusion"
    mix = decision.get("augment") or {}
    if mix and (config.distill.mix, config.distill.mix_alpha) != (mix.get("mix"), mix.get("mix_alpha")):
        return "distill.mix"
    return None


def drop_if_overridden(config, run, console) -> None:
    """`distill RUN --method dist` after `run --tune` chose labels only kept the tune record, and
    report.md said "Objective chosen by run --tune: labels only" beside the dist objective that ran
    (68th audit B1). A distill stage that runs other settings than the choice drops the record
    (tune.json and tuned.yaml stay: the search is still the run's), and says so."""
    tune = run.load_report().get("tune")
    decision = tune.get("decision") if isinstance(tune, dict) else None
    if not isinstance(decision, dict) or (what := overridden(config, decision)) is None:
        return
    run.drop_report_sections(("tune",))
    console.print(f"note: {what} differs from what run --tune chose ({decision.get('method')}), so report.json no "
                  "longer names the search as the choice (tune.json keeps it)", highlight=False, markup=False)

