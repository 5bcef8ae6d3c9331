"""Do the tests guard what the README promises? Break each promise on purpose and see.

Reads tools/mutations.yaml (safe YAML): a list of mutations, each with

    name:    a short id
    file:    a path relative to the repository root
    find:    the exact code to change (it must occur exactly once in the file)
    replace: what it becomes
    tests:   pytest node ids (or files) expected to catch it
    why:     the promise it breaks (for the table)

The repository (without .venv, .git, runs/ and caches) is copied to a temporary folder once.
Each mutation is applied to the copy alone, only its tests run there (this Python, the copy
first on sys.path, so the copy's code is what is imported; checked before anything runs),
and the file is restored. Results:

    CAUGHT             a listed test failed
    SURVIVED           every listed test passed: the promise is not guarded
    NO-LONGER-APPLIES  the code to find is not in the file (or not once): update the list
    ERROR              the tests did not run (collection error, no test found, timeout)

Before the mutations, the union of the listed tests runs once on the unmutated copy: a test
that already fails would make every mutation look caught (--no-baseline skips this).

Exit status: 1 if any mutation SURVIVED, 2 if none survived but some did not apply or
errored (or the baseline failed), 0 if every mutation was CAUGHT.

    python tools/mutation_check.py                  # every mutation
    python tools/mutation_check.py --only gate_fails_at_its_limit --no-baseline
    python tools/mutation_check.py --list
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MUTATIONS = REPO / "tools" / "mutations.yaml"
IGNORE = shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".pytest_cache", "*.egg-info",
                                ".mypy_cache", ".ruff_cache", "build", "dist", "bench-results")
PER_MUTATION_TIMEOUT_S = 300


@dataclass
class Mutation:
    name: str
    file: str
    find: str
    replace: str
    tests: list[str]
    why: str = ""


def load_mutations(path: Path = MUTATIONS) -> list[Mutation]:
    items = yaml.safe_load(path.read_text())
    if not isinstance(items, list):
        raise SystemExit(f"{path}: expected a list of mutations")
    out, names = [], set()
    for i, item in enumerate(items):
        missing = {"name", "file", "find", "replace", "tests"} - set(item or {})
        if missing:
            raise SystemExit(f"{path}: mutation #{i + 1} lacks {', '.join(sorted(missing))}")
        if item["name"] in names:
            raise SystemExit(f"{path}: mutation {item['name']!r} is listed twice")
        if item["find"] == item["replace"]:
            raise SystemExit(f"{path}: mutation {item['name']!r} changes nothing")
        names.add(item["name"])
        tests = item["tests"] if isinstance(item["tests"], list) else [item["tests"]]
        out.append(Mutation(item["name"], item["file"], item["find"], item["replace"], [str(t) for t in tests],
                            str(item.get("why", ""))))
    return out


def make_copy() -> tuple[Path, Path]:
    """(temporary folder, the repository's copy inside it). ../shared is linked beside the copy,
    as it is beside the repository (the test fixtures look for shared data there)."""
    tmp = Path(tempfile.mkdtemp(prefix="mutation-check-"))
    copy = tmp / REPO.name
    shutil.copytree(REPO, copy, ignore=IGNORE, symlinks=True)
    shared = REPO.parent / "shared"
    if shared.exists():
        (tmp / "shared").symlink_to(shared, target_is_directory=True)
    return tmp, copy


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The package is installed editable from the real repository: the copy must come first.
    env["PYTHONPATH"] = os.pathsep.join([str(copy), str(copy / "tests")] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_the_copy(copy: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "import distill_export; print(distill_export.__file__)"],
                         cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=120)
    where = out.stdout.strip()
    if out.returncode != 0 or not Path(where).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy's code is not what gets imported (distill_export from {where or out.stderr}); "
                         "refusing to run: the results would describe the real repository")
    print(f"imports from the copy: {where}", flush=True)


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[int | None, str, float]:
    """(pytest's exit code or None on timeout, the tail of its output, seconds)."""
    # One process (a few tests each; no xdist workers), whether or not pytest-xdist is installed.
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=",
           "-o", "required_plugins=", "--no-header", "-W", "ignore", "--slow", *tests]
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out", time.perf_counter() - start
    text = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode, "\n".join(text[-15:]), time.perf_counter() - start


def check_one(copy: Path, m: Mutation, timeout: float) -> tuple[str, str, float]:
    target = copy / m.file
    if not target.is_file():
        return "NO-LONGER-APPLIES", f"{m.file} does not exist", 0.0
    original = target.read_text()
    count = original.count(m.find)
    if count != 1:
        return "NO-LONGER-APPLIES", f"the code to find occurs {count} times in {m.file}", 0.0
    target.write_text(original.replace(m.find, m.replace))
    try:
        rc, tail, seconds = run_tests(copy, m.tests, timeout)
    finally:
        target.write_text(original)
    if rc is None:
        return "ERROR", f"tests timed out after {timeout:.0f} s", seconds
    if rc == 0:
        return "SURVIVED", "every listed test passed", seconds
    if rc == 1:
        failed = [line for line in tail.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return "CAUGHT", (failed[0] if failed else "a test failed")[:110], seconds
    return "ERROR", f"pytest exit {rc}: " + (tail.splitlines()[-1] if tail else "")[:100], seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="run only this mutation (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the listed tests")
    ap.add_argument("--timeout", type=float, default=PER_MUTATION_TIMEOUT_S, help="seconds per mutation")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = ap.parse_args(argv)

    mutations = load_mutations()
    if args.only:
        unknown = set(args.only) - {m.name for m in mutations}
        if unknown:
            raise SystemExit(f"unknown mutation(s): {', '.join(sorted(unknown))}")
        mutations = [m for m in mutations if m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name:40s} {m.file}  ({m.why})")
        return 0

    started = time.perf_counter()
    tmp, copy = make_copy()
    try:
        check_imports_the_copy(copy)
        baseline_ok = True
        if not args.no_baseline:
            tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
            rc, tail, seconds = run_tests(copy, tests, args.timeout * 2)
            baseline_ok = rc == 0
            print(f"baseline (unmutated, {len(tests)} test ids): {'PASS' if baseline_ok else 'FAIL'} "
                  f"in {seconds:.0f} s", flush=True)
            if not baseline_ok:
                print(tail)
        rows = []
        for m in mutations:
            status, detail, seconds = check_one(copy, m, args.timeout)
            rows.append((m, status, detail, seconds))
            print(f"{status:17s} {m.name:40s} {seconds:6.1f} s  {detail}", flush=True)
    finally:
        if args.keep:
            print(f"copy kept at {copy}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| mutation | promise it breaks | result | seconds |")
    print("|---|---|---|---|")
    for m, status, _, seconds in rows:
        print(f"| {m.name} | {m.why} | {status} | {seconds:.0f} |")
    counts = {s: sum(r[1] == s for r in rows) for s in ("CAUGHT", "SURVIVED", "NO-LONGER-APPLIES", "ERROR")}
    print(f"\n{len(rows)} mutations: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f"; {time.perf_counter() - started:.0f} s in all")
    if counts["SURVIVED"]:
        return 1
    if counts["NO-LONGER-APPLIES"] or counts["ERROR"] or not baseline_ok:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
