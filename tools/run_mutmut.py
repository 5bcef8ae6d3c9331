"""Run mutmut (the generated mutation measure of issue 25) and report the score per module.

    python tools/run_mutmut.py                      # every module in tools/mutmut.yaml
    python tools/run_mutmut.py --module files.py    # one module, with only its own fast tests
    python tools/run_mutmut.py --report             # the last run's results, no new run

A run starts from an empty mutants/ folder (mutmut would keep old results for tests that changed).

pyproject.toml's [tool.mutmut] holds the whole configuration (all modules, all their fast tests),
so a bare `mutmut run` measures the lot. With --module this wrapper narrows mutmut's loaded
configuration (only_mutate and the test selection) in-process before it runs, so one module
is measured against the tests tools/mutmut.yaml names for it.

The score is killed / (mutants − equivalent): timeouts count as killed (mutmut's own report
shows them apart), "no tests" and survivors count against. Equivalent mutants come from
tools/mutmut.yaml with their reasons; each one is printed, and one that is no longer generated,
or is killed now, is reported as stale. tools/mutation_check.py stays for the hand-written
semantic mutations (tools/mutations.yaml).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tools" / "mutmut.yaml"
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def load_spec() -> dict:
    spec = yaml.safe_load(SPEC.read_text())
    for entry in spec.get("equivalent") or []:
        if not entry.get("mutant") or not str(entry.get("reason", "")).strip():
            raise SystemExit(f"{SPEC}: every equivalent mutant needs `mutant` and a `reason`: {entry}")
    return spec


def pick_modules(spec: dict, wanted: list[str]) -> dict[str, list[str]]:
    modules = spec["modules"]
    if not wanted:
        return modules
    picked = {}
    for w in wanted:
        hits = [m for m in modules if m == w or m.endswith("/" + w) or fnmatch.fnmatch(w, m)]
        if not hits:
            raise SystemExit(f"--module {w}: not in {SPEC.name} (modules: {', '.join(modules)})")
        picked.update({h: modules[h] for h in hits})
    return picked


def run(modules: dict[str, list[str]], max_children: int | None, narrow: bool) -> None:
    os.chdir(ROOT)
    # mutmut keeps each mutant's result until the source changes and does not see a test that
    # changed: a measure starts from nothing (mutants/ is its scratch folder, git-ignored).
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    from mutmut import configuration

    cfg = configuration.config()
    if narrow:  # one module (or a few): only its mutants, only its tests
        cfg.only_mutate = list(modules)
        cfg.pytest_add_cli_args_test_selection = sorted({t for tests in modules.values() for t in tests})
    from mutmut.__main__ import cli

    args = ["run"] + (["--max-children", str(max_children)] if max_children else [])
    try:
        cli.main(args, standalone_mode=False)
    except SystemExit as exc:  # mutmut exits after its run; the report below reads its files
        if exc.code not in (0, None):
            raise


def results(module: str) -> dict[str, str]:
    """mutant name -> status, from mutmut's meta files under mutants/."""
    out = {}
    for meta in sorted((ROOT / "mutants").glob(module + ".meta")):
        data = json.loads(meta.read_text())
        for name, code in data.get("exit_code_by_key", {}).items():
            out[name] = STATUS.get(code, "suspicious")
    return out


def report(modules: dict[str, list[str]], spec: dict) -> int:
    equivalent = {e["mutant"]: e["reason"] for e in spec.get("equivalent") or []}
    seen, total_killed, total_counted = set(), 0, 0
    print(f"{'module':55} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} "
          f"{'equiv':>5} {'score':>6}")
    for module in modules:
        res = results(module)
        if not res:
            print(f"{module:55} not measured (no mutmut results)")
            continue
        seen.update(res)
        counts = Counter(res.values())
        eq = [n for n in res if n in equivalent]
        killed = counts["killed"] + counts["timeout"] - sum(res[n] in ("killed", "timeout") for n in eq)
        counted = len(res) - len(eq)
        total_killed, total_counted = total_killed + killed, total_counted + counted
        score = f"{100 * killed / counted:.1f}%" if counted else "n/a"
        print(f"{module:55} {len(res):7} {counts['killed']:6} {counts['timeout']:7} {counts['survived']:8} "
              f"{counts['no tests']:8} {len(eq):5} {score:>6}")
        for name in sorted(n for n, s in res.items() if s not in ("killed", "timeout") and n not in equivalent):
            print(f"    {res[name]:9} {name}")
    for name, reason in sorted(equivalent.items()):
        if name in seen:
            state = " (STALE: the tests kill it now)" if results_status(name, modules) in ("killed", "timeout") else ""
            print(f"    equivalent {name}: {reason}{state}")
        elif any(name.startswith(m.replace("/", ".").removesuffix(".py").rstrip("*")) for m in modules):
            print(f"    equivalent {name}: STALE, mutmut no longer generates it")
    if total_counted:
        print(f"overall: {total_killed}/{total_counted} = {100 * total_killed / total_counted:.1f}% killed "
              f"(equivalent mutants excluded)")
    return 0


def results_status(name: str, modules) -> str | None:
    for module in modules:
        status = results(module).get(name)
        if status:
            return status
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", default=[], help="a module of tools/mutmut.yaml (repeatable)")
    parser.add_argument("--max-children", type=int, default=None, help="parallel mutants (mutmut's default: CPUs)")
    parser.add_argument("--report", action="store_true", help="report the last run only")
    args = parser.parse_args(argv)
    spec = load_spec()
    modules = pick_modules(spec, args.module)
    if not args.report:
        run(modules, args.max_children, narrow=bool(args.module))
    return report(modules, spec)


if __name__ == "__main__":
    sys.exit(main())
