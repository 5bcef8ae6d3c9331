"""What tune decides once the search is done: the top trials confirmed with fresh seeds against
the labels-only baseline (confirm.py), then the objective it writes (the winner, or labels only)
and the sentences that say why."""

from __future__ import annotations

from rich.console import Console

from distill_export.confirm import LABELS_ONLY_TERMS, ConfirmSpec, confirm, confirmation_seeds, decision_line

console = Console(stderr=True, highlight=False, markup=False, emoji=False)


def confirm_top(train, completed: list, spec: ConfirmSpec, search_seed: int, quiet: bool) -> dict | None:
    """The top completed trials and the baseline re-trained with fresh seeds (confirm.py)."""
    if spec.seeds == 0:
        return None
    top = sorted(completed, key=lambda t: t.value, reverse=True)[: spec.top]
    candidates = [{"number": t.number, "method": t.params["method"], "terms": t.user_attrs["terms"],
                   "search_val_accuracy": t.value, "augment": t.user_attrs.get("augment"),
                   "teacher_fusion": t.user_attrs.get("teacher_fusion"), "rounds": t.user_attrs.get("rounds")}
                  for t in top]

    def score(terms, seed: int, augment: dict | None = None, teacher_fusion: str | None = None,
              rounds: int | None = None) -> float:
        acc = train(terms, seed, augment=augment, teacher_fusion=teacher_fusion, rounds=rounds)
        if not quiet:
            name = "baseline" if terms is None else next(f"{c['method']} (trial {c['number'] + 1})"
                                                          for c in candidates if c["terms"] is terms)
            console.print(f"confirm seed {seed}: {name} val {100 * acc:.1f}%")
        return acc

    return confirm(candidates, score, confirmation_seeds(search_seed, spec.seeds))


def decide(summary: dict) -> dict:
    """What tune writes: the confirmed winner, or labels only. Without confirmation
    (--confirm-seeds 0) the search's best trial against the one baseline run, which favours
    distilling (that score is the biased maximum of the trials)."""
    conf = summary["confirmation"]
    if conf is not None:
        win = next(c for c in conf["candidates"] if c["number"] == conf["winner"])
        distill, method, terms, line = conf["distill"], win["method"], win["terms"], decision_line(conf)
        augment, fusion, rounds = win.get("augment"), win.get("teacher_fusion"), win.get("rounds")
    else:
        best = summary["best"]
        distill, method, terms, augment = summary["beats_baseline"], best["method"], best["terms"], best.get("augment")
        fusion, rounds = best.get("teacher_fusion"), best.get("rounds")
        line = versus_baseline(best["val_accuracy"], best.get("baseline_val_accuracy", summary["baseline_val_accuracy"]))
    if not distill:
        return {"distill": False, "method": "labels_only", "terms": LABELS_ONLY_TERMS, "line": line}
    return {"distill": True, "method": method, "terms": terms, "line": line,
            **({"augment": augment} if augment else {}), **({"teacher_fusion": fusion} if fusion else {}),
            **({"rounds": rounds} if rounds else {})}


def confirmed_words(summary: dict) -> str:
    """How the choice was made, for the YAML's comment line."""
    conf = summary["confirmation"]
    if conf is None:
        return "; not confirmed: the best trial's own score"
    return (f"; top {len(conf['candidates'])} and the labels-only baseline re-trained with "
            f"{len(conf['seeds'])} fresh seeds, chosen by the mean")


def versus_baseline(best: float, baseline: float) -> str:
    """One line comparing the best objective with the labels-only baseline on validation."""
    gap = 100 * (best - baseline)
    if gap > 0:
        return f"labels-only baseline on validation: {100 * baseline:.1f}% ({gap:+.1f} points for the best objective)"
    return (f"no objective beat the labels-only baseline on validation ({100 * best:.1f}% vs "
            f"{100 * baseline:.1f}%): distillation is unlikely to pay on this data")
