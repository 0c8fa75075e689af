"""`snakemake --lint` on the workflow (with and without batched rules) finds nothing but the
findings workflow/rules/common.smk and mlflow_server.smk justify in comments; any other
finding fails here, so CI (which runs the suite) runs the linter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each justified where it arises: the MNISTBENCH definition in workflow/rules/common.smk (the
# conda finding and the variables that say how a job runs, kept out of params so they are no
# rerun trigger), and the MLFLOW_TRACKING_URI assignment in workflow/rules/mlflow_server.smk.
JUSTIFIED = [
    r"Specify a conda environment or container for each rule\.",
    r"Shell command directly uses variable (MNISTBENCH|TRACKING|DATA_DIR|config) from outside of the rule",
    r"Environment variable MLFLOW_TRACKING_URI used but not asserted with envvars directive in line \d+\.",
]


@pytest.mark.parametrize("batch_runs", ["false", "true"])
def test_lint_finds_only_the_justified_findings(batch_runs):
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--config", f"batch_runs={batch_runs}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    findings = re.findall(r"^    \* (.+?):?$", output, flags=re.MULTILINE)
    assert re.search(r"^Lints for rule train ", output, flags=re.MULTILINE), output[-3000:]  # parsed
    unexplained = sorted({f for f in findings if not any(re.fullmatch(j, f) for j in JUSTIFIED)})
    assert not unexplained, unexplained


# --- the package's import structure ----------------------------------------------------------

PACKAGE = ROOT / "mnistbench"
# The core trains and records: it imports nothing that tracks, tables or reports.
CORE = {"data", "models", "recipes", "train", "baselines", "record", "batched", "ensemble"}
OUTER = {"tracking", "aggregate", "verdicts", "report", "figures", "study", "card", "cli", "jobs", "audit"}


def package_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports, at the top or inside a function (a lazy
    import is a dependency all the same)."""
    import ast

    modules = {p.stem for p in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:  # from .x import y
                    found.add(node.module.split(".")[0])
                elif node.level == 1:  # from . import x, y
                    found.update(a.name for a in node.names if a.name in modules)
                elif node.module and node.module.startswith("mnistbench."):
                    found.add(node.module.split(".")[1])
                elif node.module == "mnistbench":
                    found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mnistbench."))
        graph[path.stem] = (found & modules) - {"__init__", path.stem}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that can reach itself, with the path back (one cycle per module)."""
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for imported in sorted(graph.get(module, ())):
                if imported == start:
                    cycles.append(path + [start])
                    stack = []
                    break
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, path + [imported]))
    return cycles


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = package_imports()
    graph["record"] = graph["record"] | {"train"}  # record.py importing train.save_state, as it did
    assert ["record", "train", "record"] in import_cycles(graph)


def test_no_import_cycle_among_the_package_modules():
    assert import_cycles(package_imports()) == []


def test_the_core_imports_no_tracking_tables_or_reporting():
    graph = package_imports()
    assert {module: graph[module] & OUTER for module in CORE if graph[module] & OUTER} == {}


def test_the_baseline_rows_are_the_baselines_that_run():
    """recipes.BASELINE_IDS (which rows train no network) and baselines.BASELINES (how each
    runs) name the same rows: the registry needs no import of the runners to know them."""
    from mnistbench.baselines import BASELINES
    from mnistbench.recipes import BASELINE_IDS, shipped_recipes

    kinds = {r.id for r in shipped_recipes().values() if r.kind == "baseline"}
    assert set(BASELINES) == set(BASELINE_IDS) == kinds


BARE_COMMAND = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*(mnistbench|snakemake|mlflow|python)\s")


def bare_commands(markdown: str) -> list[str]:
    """Lines of fenced code blocks that call the environment's programs without `.venv/bin/`:
    a plain shell answers them with 'command not found' (nothing in the docs activates it)."""
    found, inside = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside and BARE_COMMAND.match(line):
            found.append(line.strip())
    return found


def test_the_docs_print_commands_that_run_as_printed():
    assert bare_commands("```bash\nmnistbench progress\n.venv/bin/mnistbench progress\n```\nmnistbench x\n"
                         "```\nMNISTBENCH_DATA_DIR=d python benchmarks/campaign.py\n```") == [
        "mnistbench progress", "MNISTBENCH_DATA_DIR=d python benchmarks/campaign.py"]
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert bare_commands(path.read_text()) == [], path.name
