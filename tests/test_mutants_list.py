"""The curated mutation list (tests/mutants.yaml) stays in step with the code it mutates.

The mutation check itself runs before a release of the record, not in CI (docs/testing.md);
this cheap test makes CI fail as soon as a code change leaves a mutant's snippet behind, so the
list cannot rot silently between two runs of the check.
"""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_mutant_plants_exactly_once_and_names_existing_tests():
    mutants = yaml.safe_load((ROOT / "tests" / "mutants.yaml").read_text())
    assert len({m["id"] for m in mutants}) == len(mutants), "mutant ids must be unique"
    for m in mutants:
        text = (ROOT / m["file"]).read_text()
        assert text.count(m["original"]) == 1, f"{m['id']}: snippet occurs {text.count(m['original'])} times in {m['file']}"
        assert m["replacement"] != m["original"], m["id"]
        for test in m["tests"]:
            assert (ROOT / test.split("::")[0]).is_file(), f"{m['id']}: no test file {test}"
