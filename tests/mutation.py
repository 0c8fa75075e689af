"""The mutation check: plant each curated protocol bug (tests/mutants.yaml) in a temporary copy
of the repository, run only the tests named for it, and print killed / survived.

    .venv/bin/python tests/mutation.py              # every mutant
    .venv/bin/python tests/mutation.py --only ID    # one (repeatable)
    .venv/bin/python tests/mutation.py --list

A mutant is killed when its tests fail (pytest exit status 1) with it planted; any other status
(2-5: the tests could not run) is reported as an error. The exit status is 1 if any mutant
survives or errs. Run it before each release of the record (docs/testing.md); it is not part of CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "tests" / "mutants.yaml"


def load_mutants() -> list[dict]:
    return yaml.safe_load(MUTANTS.read_text())


def copy_checkout(into: Path) -> Path:
    """The tracked and untracked-not-ignored files of the checkout (no data, venvs, results of runs)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def plant(repo: Path, mutant: dict) -> str:
    """Apply the mutant; returns the file's original text (to restore it)."""
    path = repo / mutant["file"]
    text = path.read_text()
    count = text.count(mutant["original"])
    if count != 1:
        raise SystemExit(f"mutant {mutant['id']}: its original snippet occurs {count} times in "
                         f"{mutant['file']} (expected once): update tests/mutants.yaml")
    path.write_text(text.replace(mutant["original"], mutant["replacement"]))
    return text


def run_tests(repo: Path, tests: list[str]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if (ROOT / "data" / "MNIST" / "raw").is_dir() and "MNISTBENCH_DATA_DIR" not in env:
        env["MNISTBENCH_DATA_DIR"] = str(ROOT / "data")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "-x", "-q", "--tb=line", *tests], cwd=repo, env=env, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def failure_line(output: str) -> str:
    """The first failure pytest printed (--tb=line: "path:line: Error: message"), to show why a
    mutant was killed."""
    for line in output.splitlines():
        if line.startswith("E ") or ("Error" in line and "/tests/" in line):
            return line.strip()[-160:]
    failed = [line for line in output.splitlines() if line.startswith("FAILED")]
    return failed[0][-160:] if failed else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    args = parser.parse_args(argv)
    mutants = load_mutants()
    if args.only:
        unknown = set(args.only) - {m["id"] for m in mutants}
        if unknown:
            parser.error(f"unknown mutant(s): {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m["id"] in args.only]
    if args.list:
        for m in mutants:
            print(f"{m['id']}: {m['file']}; tests: {' '.join(m['tests'])}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mnistbench-mutants-") as tmp:
        repo = copy_checkout(Path(tmp))
        for mutant in mutants:
            original = plant(repo, mutant)
            started = time.perf_counter()
            try:
                status, output = run_tests(repo, mutant["tests"])
            finally:
                (repo / mutant["file"]).write_text(original)
            outcome = {0: "SURVIVED", 1: "killed"}.get(status, f"ERROR (pytest exit {status})")
            why = failure_line(output) if status == 1 else (output.strip().splitlines() or [""])[-1]
            results.append(outcome)
            print(f"{outcome:9} {mutant['id']:38} {time.perf_counter() - started:6.1f}s  {why}", flush=True)
    killed = results.count("killed")
    print(f"\nmutation score: {killed}/{len(results)} killed"
          f"{'' if killed == len(results) else f'; {len(results) - killed} not killed'}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
