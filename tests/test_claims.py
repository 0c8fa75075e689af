"""Recipes and claims defined in a study's config (mnistbench.definitions, docs/claims.md): the
same path as a shipped row (plan, train, record, audit without the config, tables, verdict,
report), a clear message for each bad definition, and shipped recipes left exactly as they were
(their resolved configuration against a snapshot taken before the mechanism existed, and a
bit-identical one-epoch audit)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnistbench import cli, definitions, recipes, stats
from mnistbench.aggregate import collect_runs, write_tables
from mnistbench.definitions import DefinitionError, define
from mnistbench.record import read_record, run_dir
from mnistbench.report import build_report
from mnistbench.verdicts import judge_recipes, load_metrics, load_tables
from mnistbench.study import planned_runs
from mnistbench.train import planned_config

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).parent / "snapshots" / "shipped_recipes.json"

# A dense net small enough to train three seeds in seconds: its own epochs and data, so that the
# verdict is a real one (no study setting changes what the claim depends on).
MINE = {
    "small_fc": {
        "base": "nielsen_ch1_fc30", "description": "the chapter-1 net, 20 hidden units, 300 images",
        "hidden": [20], "batch_size": 20, "epochs": 1, "train_subset": 300,
        "claim": {"accuracy": 60.0, "source": "a test's own claim", "epoch": "peak", "best_of": 3,
                  "chosen_by": "test"},
    },
    "small_fc_relu": {"base": "nielsen_ch1_fc30", "activation": "relu", "hidden": [20], "epochs": 1,
                      "train_subset": 300, "lr": 0.1},  # no claim: "no published number"
}


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test starts as a fresh process would: no recipe of a config registered."""
    monkeypatch.setattr(recipes, "_REGISTERED", {})


# --- shipped recipes are unchanged -----------------------------------------------------------

def test_every_shipped_recipe_resolves_as_before_the_mechanism():
    """tests/snapshots/shipped_recipes.json: every shipped recipe and its resolved run config,
    written by the code of main before recipes of a config existed."""
    snapshot = json.loads(SNAPSHOT.read_text())
    shipped = recipes.shipped_recipes()
    assert set(snapshot) == set(shipped)
    new_fields = {"user_defined": False, "base": "", "definition": ""}
    for recipe_id, recipe in shipped.items():
        now = json.loads(json.dumps(dataclasses.asdict(recipe)))
        assert {k: now.pop(k) for k in new_fields} == new_fields, recipe_id
        assert now == snapshot[recipe_id]["recipe"], recipe_id
        if recipe.kind == "network":
            config = dataclasses.asdict(planned_config(recipe, 1, "cpu"))
            assert config == snapshot[recipe_id]["config"], recipe_id
        assert recipes.recipe_record(recipe) is None  # their records get no new key


def test_a_shipped_run_records_and_audits_as_before(tmp_path, data_dir):
    out = run_dir("s", "nielsen_ch1_fc30", "3", 1, results=tmp_path)
    assert cli.main(["train", "--recipe", "nielsen_ch1_fc30", "--seed", "1", "--epochs", "1",
                     "--train-subset", "300", "--threads", "1", "--device", "cpu", "--quiet",
                     "--no-checkpoint", "--out", str(out)]) == 0
    record = read_record(out / "metrics.json")
    assert "user_recipe" not in record
    assert record["config"] == {**json.loads(SNAPSHOT.read_text())["nielsen_ch1_fc30"]["config"],
                                "epochs": 1, "train_subset": 300, "train_images": 300,
                                "weight_decay": 0.0, "seed": 1}
    audited = _audit(out / "metrics.json", cwd=tmp_path)
    assert "bit-identical over 1 epoch(s)" in audited, audited


# --- a recipe and claim of one's own, end to end ----------------------------------------------

def _audit(*records: Path, cwd: Path) -> str:
    """`mnistbench audit` in a fresh process, in a folder without any config."""
    result = subprocess.run([sys.executable, "-m", "mnistbench", "audit", "--quiet", *map(str, records)],
                            cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_recipe_and_claim_of_ones_own_take_the_path_of_a_shipped_row(tmp_path, data_dir, monkeypatch, capsys):
    config = {"recipes": MINE, "studies": {"mine": {"recipes": list(MINE), "seeds": [1, 2, 3]}}}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    define(MINE)
    spec = config["studies"]["mine"]
    plan = planned_runs(spec)
    assert [(r.recipe, r.lr, r.seed) for r in plan] == [
        ("small_fc", "3", 1), ("small_fc", "3", 2), ("small_fc", "3", 3),
        ("small_fc_relu", "0.1", 1), ("small_fc_relu", "0.1", 2), ("small_fc_relu", "0.1", 3)]
    results = tmp_path / "results"
    passed_on = {recipe_id: definitions.definition_json(recipe_id) for recipe_id in MINE}  # common.smk
    for run in plan:  # as the workflow's jobs: each gets its recipe as --define
        monkeypatch.setattr(recipes, "_REGISTERED", {})  # a job is a fresh process
        assert cli.main(["train", "--recipe", run.recipe, "--seed", str(run.seed), "--threads", "1",
                         "--device", "cpu", "--quiet", "--no-checkpoint", "--study", "mine",
                         "--define", passed_on[run.recipe],
                         "--out", str(run.path("mine", results).parent)]) == 0
    record = read_record(plan[0].path("mine", results))
    assert record["user_recipe"]["definition"] == MINE["small_fc"]
    assert record["user_recipe"]["resolved"]["arch"]["hidden"] == [20]
    assert record["published_accuracy"] == 60.0

    # the tables, the verdict and the report, from the records alone
    monkeypatch.setattr(recipes, "_REGISTERED", {})
    study_dir = results / "mine"
    write_tables(collect_runs(study_dir), study_dir)
    monkeypatch.setattr(recipes, "_REGISTERED", {})
    runs, summary = load_tables(study_dir)
    assert set(runs["kind"]) == {"network"} and set(runs["published_lr"]) == {3.0, 0.1}
    assert summary["note"].str.contains("user-defined in the study's config").all()
    rows = {r["recipe"]: r for r in judge_recipes(runs, summary, load_metrics(runs, study_dir), False)}
    mine = rows["small_fc"]
    finished = runs[runs["recipe"] == "small_fc"]
    # judged as a shipped row is: runs that never learned a digit are counted apart (stats.judge_runs)
    expected = stats.judge_runs(60.0, finished["selected_accuracy"].tolist(), finished["failed"].tolist(),
                                k=3, printed=stats.printed_range("60.0", "rounded"))
    assert (mine["verdict"], mine["k"], mine["user_defined"]) == (expected.verdict, 3, True)
    assert (mine["failed"], mine["judged_runs"]) == (expected.failed, 3)
    assert mine["verdict"] not in ("settings changed", "no published number")
    assert rows["small_fc_relu"]["verdict"] == "no published number"
    build_report(study_dir, tmp_path / "report", spec)
    page = (tmp_path / "report" / "README.md").read_text()
    assert "[`small_fc`](#small_fc) (user-defined) | 60.0 |" in page
    assert "user-defined in the study's config (base nielsen_ch1_fc30)" in page

    # the card, from the config file: its report is the study's, never the tracked replication page
    capsys.readouterr()
    assert cli.main(["recipes", "small_fc", "--configfile", str(tmp_path / "my.yaml")]) == 0
    card = capsys.readouterr().out
    assert "reports/<study>/index.html#r-small_fc" in card and "reports/replication" not in card

    # the audit: a fresh process, no config anywhere
    audited = _audit(*(r.path("mine", results) for r in plan[:1] + plan[3:4]), cwd=tmp_path / "report")
    assert audited.count("bit-identical over 1 epoch(s)") == 2, audited


# --- bad definitions ----------------------------------------------------------------------------

GOOD = {"base": "nielsen_ch6_dbl_conv_relu"}


@pytest.mark.parametrize("recipe_id, spec, message", [
    ("mine", {**GOOD, "hiden": [50]}, "recipe 'mine': 'hiden' is not a field (did you mean 'hidden'?)"),
    ("mine", {**GOOD, "hidden": [0]}, "recipe 'mine': hidden must be a list of hidden layer widths >= 1, got [0]"),
    ("mine", {**GOOD, "convs": [20, 40, 80]}, "recipe 'mine': convs [20, 40, 80] with padding 0 shrink"),
    ("mine", {"base": "nielsen_ch6_dbl_conv_rel"}, "recipe 'mine': base 'nielsen_ch6_dbl_conv_rel' is not a "
                                                   "shipped recipe (did you mean 'nielsen_ch6_dbl_conv_relu'?)"),
    ("mine", {"base": "nielsen_ch6_ensemble"}, "recipe 'mine': base 'nielsen_ch6_ensemble' is a ensemble"),
    ("mine", {"description": "no base"}, "recipe 'mine': base None is not a shipped recipe"),
    ("nielsen_ch6_dropout", GOOD, "recipe 'nielsen_ch6_dropout': the id of a shipped recipe"),
    ("../x", GOOD, "recipe id '../x' is not a plain name"),
    ("my net", GOOD, "recipe id 'my net' is not a plain name"),
    ("a/b", GOOD, "recipe id 'a/b' is not a plain name"),
    ("mine", {**GOOD, "lr": 0}, "recipe 'mine': lr must be a number > 0, got 0"),
    ("mine", {**GOOD, "claim": {"accuracy": 99.1, "source": "notes"}}, "recipe 'mine': claim needs epoch"),
    ("mine", {**GOOD, "claim": {"accuracy": 99.1, "source": "x", "epoch": "final", "best_of": 3}},
     "recipe 'mine': claim.best_of 3 needs claim.chosen_by"),
    ("mine", {**GOOD, "claim": {"acuracy": 99.1}}, "recipe 'mine': claim.'acuracy' is not a field"),
    ("mine", {**GOOD, "protocol": "articles"}, "recipe 'mine': the articles protocol has no validation set"),
    ("mine", {**GOOD, "selection": "peak", "claim": {"accuracy": 99, "source": "x", "epoch": "final"}},
     "recipe 'mine': selection 'peak' contradicts claim.epoch 'final'"),
])
def test_a_bad_definition_gets_a_message_naming_the_recipe_and_the_field(recipe_id, spec, message):
    with pytest.raises(DefinitionError) as err:
        define({recipe_id: spec})
    assert message in str(err.value)
    assert recipe_id not in recipes.all_recipes() or recipe_id in recipes.shipped_recipes()


def test_the_workflow_schema_knows_the_same_fields_as_the_package():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    recipe = schema["$defs"]["recipe"]["properties"]
    assert set(recipe) == definitions.TOP | set(definitions.FIELDS)
    assert set(recipe["claim"]["properties"]) == set(definitions.CLAIM_FIELDS)
    assert set(recipe["claim"]["required"]) == set(definitions.REQUIRED_CLAIM)


def test_the_shipped_example_config_defines_its_recipes():
    config = yaml.safe_load((ROOT / "config" / "examples" / "my_claims.yaml").read_text())
    defined = define(config["recipes"])
    assert [r.id for r in defined] == ["dbl_conv_relu_batch64", "dropout_inverted_articles"]
    assert defined[0].published_accuracy == 99.1 and defined[0].best_of == 3
    assert defined[1].published_accuracy is None and defined[1].protocol.code == "articles"
    for study in config["studies"].values():
        assert planned_runs(study)


@pytest.mark.slow
@pytest.mark.parametrize("recipes_entry, message", [
    ({"mine": {"base": "nielsen_ch1_fc30", "hiden": [5]}},
     "config: recipes.mine: Additional properties are not allowed ('hiden' was unexpected)"),
    ({"mine": {"base": "nielsen_ch1_fc3"}},
     "config: recipe 'mine': base 'nielsen_ch1_fc3' is not a shipped recipe (did you mean 'nielsen_ch1_fc30'?)"),
])
def test_the_workflow_stops_on_a_bad_definition_before_any_job(tmp_path, data_dir, recipes_entry, message):
    config = {"study": "mine", "data_dir": str(data_dir), "recipes": recipes_entry,
              "studies": {"mine": {"recipes": ["mine"], "seeds": [1]}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
                             "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
                             "--cores", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_the_workflow_hands_each_job_its_recipe_of_the_example_config(tmp_path):
    """`snakemake --configfile config/examples/my_claims.yaml`: one training job per seed of each
    recipe of the config, each with its definition as --define; a shipped recipe's job has none."""
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
                             "--directory", str(tmp_path), "--configfile",
                             str(ROOT / "config" / "examples" / "my_claims.yaml"), "--cores", "1",
                             "--dry-run", "--printshellcmds"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    commands = [line for line in result.stdout.splitlines() if " -m mnistbench train " in line]
    assert len(commands) == 4 and all("--define '{\"d" in c for c in commands)
    define(yaml.safe_load((ROOT / "config" / "examples" / "my_claims.yaml").read_text())["recipes"])
    for recipe_id in ("dbl_conv_relu_batch64", "dropout_inverted_articles"):
        assert sum(f"--recipe {recipe_id} " in c for c in commands) == 2
    assert definitions.definition_json("nielsen_ch1_fc30") is None  # shipped: command unchanged
