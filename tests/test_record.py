"""The replication record: audits of recorded runs, progress, and the tracked record itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnistbench.cli import main
from mnistbench.record import find_records, read_record, run_dir
from mnistbench.recipes import all_recipes
from mnistbench.study import NOMINAL_RATES, planned_images, planned_runs, priorities, progress
from mnistbench.stats import judge
from mnistbench.train import cpu_kind

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "results" / "replication"


def mnistbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mnistbench", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, data_dir):
    """A small run trained through the CLI, as the workflow records one."""
    out = tmp_path_factory.mktemp("record") / "results/demo/runs/nielsen_ch3_overfit_1000/lr=0.5/seed=3"
    done = mnistbench("train", "--recipe", "nielsen_ch3_overfit_1000", "--seed", "3", "--epochs", "3",
                      "--threads", "1", "--quiet", "--data-dir", str(data_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out / "metrics.json"


def test_audit_of_an_untouched_record_is_bit_identical(recorded_run, data_dir):
    done = mnistbench("audit", "--quiet", "--data-dir", str(data_dir), str(recorded_run))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bit-identical over 3 epoch(s)" in done.stdout


def test_a_record_names_the_kind_of_cpu_beyond_its_marketing_name(recorded_run, monkeypatch):
    """Which kernels ran decides bit-identity: family and model numbers, torch's dispatch ISA,
    and any cap put on oneDNN's or MKL's own choice."""
    import torch
    from mnistbench.train import cpu_kind

    kind = read_record(recorded_run)["environment"]["cpu_kind"]
    assert kind == cpu_kind() and kind.endswith(torch.backends.cpu.get_cpu_capability())
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_kind() == f"{kind}, ONEDNN_MAX_CPU_ISA=AVX2"


def test_audit_finds_a_changed_number(recorded_run, tmp_path, data_dir):
    record = read_record(recorded_run)
    record["history"][1]["train_loss"] += 1e-6  # one loss of one epoch, a millionth off
    tampered = tmp_path / "metrics.json"
    tampered.write_text(json.dumps(record))
    done = mnistbench("audit", "--quiet", "--data-dir", str(data_dir), str(tampered))
    # a loss that adds in another order, with every accuracy and prediction the same: exit 3
    assert done.returncode == 3, done.stdout + done.stderr
    assert "NUMERICALLY DIFFERENT over 3 epoch(s), same results" in done.stdout
    assert "train_loss 1e-06" in done.stdout and "the same test_accuracy, val_accuracy in every epoch" in done.stdout
    assert "10,000 test predictions" in done.stdout


def test_audit_tells_a_different_result_from_a_numerical_difference(recorded_run, tmp_path, data_dir):
    record = read_record(recorded_run)
    record["history"][1]["train_loss"] += 1e-6
    record["history"][2]["test_accuracy"] += 0.01  # one test image more right in the last epoch
    tampered = tmp_path / "metrics.json"
    tampered.write_text(json.dumps(record))
    done = mnistbench("audit", "--quiet", "--data-dir", str(data_dir), str(tampered), str(recorded_run))
    assert done.returncode == 1, done.stdout + done.stderr  # the worst of the records decides
    assert "DIFFERS over 3 epoch(s)" in done.stdout and "test_accuracy 0.01" in done.stdout
    assert "NUMERICALLY" not in done.stdout and "bit-identical" in done.stdout


def test_audit_calls_a_record_of_another_recipe_reading_stale(recorded_run, tmp_path, data_dir):
    record = read_record(recorded_run)
    record["config"]["scaling"] = "k/255"  # recorded before the book's pixels became k/256
    stale = tmp_path / "metrics.json"
    stale.write_text(json.dumps(record))
    done = mnistbench("audit", "--quiet", "--data-dir", str(data_dir), str(stale))
    assert done.returncode == 1 and "STALE" in done.stdout and "scaling 'k/255' -> 'k/256'" in done.stdout


@pytest.mark.parametrize("run, scope", [
    ("nielsen_ch6_ensemble/lr=0.03/group=1", "vote of its 5 members' recorded predictions"),
    ("nielsen_ch1_darkness/lr=none/seed=1", "when the baseline runs again"),
])
def test_a_recorded_vote_or_baseline_done_again_matches_its_record(run, scope, tmp_path, data_dir):
    """Neither trains a network, so both match on any machine; for the vote, one
    prediction changed in the record is found."""
    path = RECORD / "runs" / run / "metrics.json"
    if not path.exists():
        pytest.skip(f"no {run} in the record yet")
    done = mnistbench("audit", "--data-dir", str(data_dir), str(path), cwd=ROOT)
    assert done.returncode == 0 and f"bit-identical {scope}" in done.stdout, done.stdout + done.stderr
    if "ensemble" not in run:
        return
    record = read_record(path)
    first = record["test_predictions"][0]
    record["test_predictions"] = str((int(first) + 1) % 10) + record["test_predictions"][1:]
    tampered = tmp_path / "metrics.json"
    tampered.write_text(json.dumps(record))
    done = mnistbench("audit", "--data-dir", str(data_dir), str(tampered), cwd=ROOT)
    assert done.returncode == 1 and f"DIFFERS {scope}" in done.stdout and "test_predictions" in done.stdout


def test_audit_names_an_unreadable_record(tmp_path):
    broken = tmp_path / "metrics.json"
    broken.write_text('{"recipe": "nielsen_ch1_fc30", "history": [')
    done = mnistbench("audit", str(broken))
    assert done.returncode == 2 and str(broken) in done.stderr and "Traceback" not in done.stderr


def test_planned_runs_and_progress(tmp_path):
    spec = {"recipes": ["nielsen_ch1_fc30", "nielsen_ch1_svm", "nielsen_ch6_dropout", "nielsen_ch6_ensemble"],
            "seeds": [1, 2, 3, 4, 5], "lr_factors": [1],
            "per_recipe": {"nielsen_ch1_fc30": {"lr_factors": [0.333333, 1, 3], "seeds": [1, 2, 3]}}}
    runs = planned_runs(spec)
    assert [(r.recipe, r.lr) for r in runs[:9:3]] == [("nielsen_ch1_fc30", "1"), ("nielsen_ch1_fc30", "3"),
                                                      ("nielsen_ch1_fc30", "9")]
    assert [r.seed for r in runs if r.recipe == "nielsen_ch1_svm"] == [1]  # deterministic: once
    assert [r.group for r in runs if r.recipe == "nielsen_ch6_ensemble"] == [1]
    assert len(runs) == 9 + 1 + 5 + 1
    # three finished fc30 runs at the published lr make its number judgeable; one at lr 9 does not count
    for seed, lr in [(1, 3.0), (2, 3.0), (3, 3.0), (1, 9.0)]:
        path = run_dir("s", "nielsen_ch1_fc30", lr, seed, results=tmp_path) / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"recipe": "nielsen_ch1_fc30", "lr": lr, "seed": seed, "status": "finished",
                                    "selected_accuracy": 95.0, "train_seconds": 1800, "eval_seconds": 0,
                                    "images_per_second": 25_000, "environment": {"threads": 1}}))
    p = progress(spec, "s", tmp_path)
    assert (p.published_done, p.published_total, p.runs_done, p.runs_planned) == (1, 4, 4, 16)
    assert p.core_hours_done == pytest.approx(2.0)
    fc30 = p.rows[0]
    assert fc30["enough"] and fc30["at_published_lr"] == 3
    # 5 fc30 runs left at the measured 25,000 img/s: 5 x 30 epochs x 50,000 images, +10% evaluation
    assert fc30["core_hours_left"] == pytest.approx(5 * 1_500_000 / 25_000 * 1.1 / 3600)


def finished_record(study, recipe, lr, seed, results, images_per_second=1000, threads=1, cpu_kind=None):
    path = run_dir(study, recipe, lr, seed, results=results) / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"recipe": recipe, "lr": lr, "seed": seed, "status": "finished",
                                "selected_accuracy": 99.0, "train_seconds": 3600, "eval_seconds": 0,
                                "images_per_second": images_per_second,
                                "environment": {"threads": threads, "cpu_kind": cpu_kind}}))


def test_a_run_is_estimated_at_the_rate_its_network_measured(tmp_path):
    """A run costs what the runs of the same network at the same batch size measured, whichever
    recipe they belong to (the expanded-data net and the articles' ReLU nets are the ReLU double
    conv): the median of all, so two recipes of one network get one rate. The sigmoid double
    conv, another network, keeps its nominal rate."""
    spec = {"recipes": ["nielsen_ch6_dbl_conv_relu", "nielsen_ch6_expanded", "seed_relu", "seed_2conv"],
            "seeds": [1, 2, 3]}
    finished_record("s", "nielsen_ch6_dbl_conv_relu", 0.03, 1, tmp_path, images_per_second=500)
    finished_record("s", "seed_relu", 0.03, 1, tmp_path, images_per_second=1500)
    finished_record("s", "seed_relu", 0.03, 2, tmp_path, images_per_second=1000)
    rows = {row["recipe"]: row for row in progress(spec, "s", tmp_path).rows}
    for recipe_id in ("nielsen_ch6_dbl_conv_relu", "nielsen_ch6_expanded", "seed_relu"):
        assert rows[recipe_id]["run_hours"] == pytest.approx(
            planned_images(all_recipes()[recipe_id], spec) / 1000 * 1.1 / 3600)
    assert rows["seed_2conv"]["run_hours"] == pytest.approx(
        planned_images(all_recipes()["seed_2conv"], spec) / NOMINAL_RATES["conv20-40"] * 1.1 / 3600)


def test_a_run_with_more_threads_costs_its_cores(tmp_path):
    """A two-thread run (a study's per_recipe threads) trains faster but holds two cores: progress
    counts images per core-second, so its core-hours done and left are both per core."""
    spec = {"recipes": ["nielsen_ch6_dropout"], "seeds": [1, 2]}
    finished_record("s", "nielsen_ch6_dropout", 0.03, 1, tmp_path, images_per_second=1000, threads=2)
    row = progress(spec, "s", tmp_path).rows[0]
    assert row["core_hours"] == pytest.approx(2.0)  # 3,600 s on two threads
    assert row["run_hours"] == pytest.approx(
        planned_images(all_recipes()["nielsen_ch6_dropout"], spec) / 500 * 1.1 / 3600)


def test_what_is_left_is_estimated_at_this_cpus_rates_where_it_measured_them(tmp_path):
    """Once this machine's kind of CPU has runs, what is left is estimated at its speed (it trains
    what is left): its own runs' rates for the networks it trained; for the others, whether
    measured on other machines or not at all, the nominal rate times the median ratio of its
    rates to the nominal ones."""
    spec = {"recipes": ["seed_relu", "nielsen_ch6_basic_conv", "nielsen_ch6_fc100", "seed_final"],
            "seeds": [1, 2, 3, 4]}
    finished_record("s", "seed_relu", 0.03, 1, tmp_path, images_per_second=500, cpu_kind="elsewhere")
    finished_record("s", "seed_relu", 0.03, 2, tmp_path, images_per_second=600, cpu_kind="elsewhere")
    conv = NOMINAL_RATES["conv20-40"]
    finished_record("s", "seed_relu", 0.03, 3, tmp_path, images_per_second=2 * conv, cpu_kind=cpu_kind())
    dense = NOMINAL_RATES["dense"]
    for seed, factor in [(1, 3), (2, 4), (3, 5)]:  # its median, 4: one network, one ratio
        finished_record("s", "nielsen_ch6_fc100", 0.1, seed, tmp_path, images_per_second=factor * dense,
                        cpu_kind=cpu_kind())
    finished_record("s", "nielsen_ch6_basic_conv", 0.1, 1, tmp_path, images_per_second=700)
    rows = {row["recipe"]: row for row in progress(spec, "s", tmp_path).rows}
    for recipe_id, rate in [("seed_relu", 2 * conv), ("nielsen_ch6_fc100", 4 * dense),
                            ("nielsen_ch6_basic_conv", 3 * NOMINAL_RATES["conv20"]),  # median(2, 4) = 3
                            ("seed_final", 3 * NOMINAL_RATES["conv20-40-fc1000x2"])]:
        assert rows[recipe_id]["run_hours"] == pytest.approx(
            planned_images(all_recipes()[recipe_id], spec) / rate * 1.1 / 3600), recipe_id


def test_a_cpu_kind_without_runs_estimates_at_every_kinds_rates(tmp_path):
    """A new machine has no rate of its own: the recorded runs' medians, whatever kind trained
    them, and the nominal rates, unscaled."""
    spec = {"recipes": ["seed_relu", "seed_final"], "seeds": [1, 2, 3]}
    finished_record("s", "seed_relu", 0.03, 1, tmp_path, images_per_second=500, cpu_kind="elsewhere")
    finished_record("s", "seed_relu", 0.03, 2, tmp_path, images_per_second=900, cpu_kind="another")
    rows = {row["recipe"]: row for row in progress(spec, "s", tmp_path).rows}
    for recipe_id, rate in [("seed_relu", 700), ("seed_final", NOMINAL_RATES["conv20-40-fc1000x2"])]:
        assert rows[recipe_id]["run_hours"] == pytest.approx(
            planned_images(all_recipes()[recipe_id], spec) / rate * 1.1 / 3600), recipe_id


def test_priorities_train_the_cheapest_runs_a_verdict_needs_first(tmp_path):
    """Snakemake's job priorities follow the campaign order: a recipe's priority setting, then the
    runs a verdict still needs (the first unrecorded seeds at the published lr), cheapest first."""
    spec = {"recipes": ["nielsen_ch6_dbl_conv", "nielsen_ch1_fc30", "nielsen_ch1_svm", "seed_final"],
            "seeds": [1, 2, 3, 4, 5], "lr_factors": [1],
            "per_recipe": {"nielsen_ch1_fc30": {"lr_factors": [0.333333, 1, 3], "seeds": [5, 4, 3, 2, 1]},
                           "seed_final": {"seeds": [1, 2, 3], "priority": -1}}}
    p = priorities(spec, "s", tmp_path)
    order = [(r.recipe, r.lr, r.seed) for r in sorted(p, key=p.get, reverse=True)]
    assert sorted(p.values()) == list(range(1, len(planned_runs(spec)) + 1))  # distinct, one per run
    # a baseline, then the dense net (minutes) before the double conv (an hour); the study's first
    # seeds, four of the double conv (a best of 3 chosen by validation needs 4: stats.runs_needed)
    needed = [("nielsen_ch1_svm", "none", 1)] + [("nielsen_ch1_fc30", "3", s) for s in (5, 4, 3)] + [
        ("nielsen_ch6_dbl_conv", "0.1", s) for s in (1, 2, 3, 4)]
    assert order[:8] == needed
    rest = order[8:-3]
    assert {lr for _, lr, _ in rest[:12]} == {"1", "3", "9"} and rest[12:] == [
        ("nielsen_ch6_dbl_conv", "0.1", 5)]
    assert order[-3:] == [("seed_final", "0.03", s) for s in (1, 2, 3)]  # priority -1: last of all
    # finished runs count, and their rate: seeds 2 and 4 of the double conv recorded at 100,000
    # images/s make it cheaper than the dense net at its nominal rate; seeds 1 and 3 are still needed
    for seed in (2, 4):
        finished_record("s", "nielsen_ch6_dbl_conv", 0.1, seed, tmp_path, images_per_second=100_000)
    p = priorities(spec, "s", tmp_path)
    order = [(r.recipe, r.seed) for r in sorted(p, key=p.get, reverse=True) if r.lr in ("0.1", "3")]
    assert order[:5] == [("nielsen_ch6_dbl_conv", 1), ("nielsen_ch6_dbl_conv", 3), ("nielsen_ch1_fc30", 5),
                         ("nielsen_ch1_fc30", 4), ("nielsen_ch1_fc30", 3)]
    # a run that a stopped campaign left half trained (its checkpoint) resumes first, within its
    # recipe's priority setting
    for recipe_id, lr, seed in [("nielsen_ch1_fc30", 9.0, 1), ("seed_final", 0.03, 2)]:
        folder = run_dir("s", recipe_id, lr, seed, results=tmp_path)
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b"")
    p = priorities(spec, "s", tmp_path)
    order = [(r.recipe, r.lr, r.seed) for r in sorted(p, key=p.get, reverse=True)]
    assert order[:3] == [("nielsen_ch1_fc30", "9", 1), ("nielsen_ch1_svm", "none", 1),
                         ("nielsen_ch6_dbl_conv", "0.1", 1)]
    assert order[-3:] == [("seed_final", "0.03", s) for s in (2, 1, 3)]


def test_priorities_train_the_members_an_ensembles_verdict_needs(tmp_path):
    """An ensemble's verdict needs three groups of five member runs: all 15 seeds of the dropout
    net are needed for a verdict, so they come before a cheap net's extra seeds, not after."""
    spec = {"recipes": ["nielsen_ch6_dropout", "nielsen_ch6_ensemble", "nielsen_ch1_fc30"],
            "seeds": list(range(1, 16)), "per_recipe": {"nielsen_ch1_fc30": {"seeds": [1, 2, 3, 4, 5]}}}
    p = priorities(spec, "s", tmp_path)
    order = [(r.recipe, r.seed) for r in sorted(p, key=p.get, reverse=True) if r.group is None]
    assert order[-2:] == [("nielsen_ch1_fc30", 4), ("nielsen_ch1_fc30", 5)]
    assert order[:3] == [("nielsen_ch1_fc30", s) for s in (1, 2, 3)]


def test_progress_counts_a_number_done_exactly_when_the_report_can_judge_it(tmp_path):
    """One rule for "enough runs" (stats.runs_needed): one ensemble group is one vote, one number
    and no spread, so progress must not count the ensemble as done while the report says "not
    enough runs"; three groups make it judgeable."""
    spec = {"recipes": ["nielsen_ch6_ensemble"], "seeds": list(range(1, 16))}
    for group in (1, 2):
        path = run_dir("s", "nielsen_ch6_ensemble", 0.03, group=group, results=tmp_path) / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"recipe": "nielsen_ch6_ensemble", "lr": 0.03, "group": group,
                                    "status": "finished", "selected_accuracy": 99.6}))
        row = progress(spec, "s", tmp_path).rows[0]
        judgement = judge(99.67, 99.6, 0.02, row["at_published_lr"], deterministic=False)
        assert row["enough"] == (judgement.verdict != "not enough runs") == (group == 3)
    assert row["needed"] == 3 and "a verdict needs 3" in judgement.reason


def test_progress_prints_the_rows_the_summary_and_what_comes_next(tmp_path, capsys):
    spec = {"recipes": ["nielsen_ch6_dbl_conv", "nielsen_ch1_svm"], "seeds": [1, 2, 3]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"studies": {"s": spec}}))
    finished_record("s", "nielsen_ch6_dbl_conv", 0.1, 1, tmp_path)
    main(["progress", "--study", "s", "--config", str(tmp_path / "config.yaml"), "--results", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["nielsen_ch6_dbl_conv", "1/3"]
    assert out[-2] == ("next in Snakemake's order: nielsen_ch1_svm lr none seed 1, "
                       "nielsen_ch6_dbl_conv lr 0.1 seed 2, nielsen_ch6_dbl_conv lr 0.1 seed 3")
    assert out[-1].startswith("s: 0/2 published numbers with enough runs; 1/4 runs finished; 1.0 core-hours done")


def test_the_tracked_record_is_readable_and_holds_no_weights():
    """Every tracked record reads, belongs to a recipe, and lies where its own keys say; the
    record tracks no weights, checkpoints or logs."""
    tracked = subprocess.run(["git", "ls-files", "results"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout, or no record yet")
    assert all(f.startswith("results/replication/") for f in tracked)
    assert not [f for f in tracked if not f.endswith((".json", ".csv", ".md"))]
    for path in find_records(RECORD):
        record = read_record(path)
        assert record["recipe"] in all_recipes()
        expected = run_dir("replication", record["recipe"], record.get("lr"), record.get("seed"),
                           record.get("group"), ROOT / "results") / "metrics.json"
        assert path == expected
        assert len(record.get("test_predictions") or "") in (0, 10_000)
    assert sum(f.stat().st_size for f in RECORD.rglob("*") if f.is_file()) < 20_000_000 if RECORD.exists() else True


def _cheapest_record(code: str) -> Path | None:
    """The recorded finished run of a protocol family that trains the fewest images."""
    best = None
    for path in find_records(RECORD):
        record = read_record(path)
        config = record.get("config") or {}
        if config.get("protocol_code") == code and record.get("status") == "finished":
            cost = config["train_images"] * config["epochs"]
            best = min(best or (cost, path), (cost, path))
    return best and best[1]


@pytest.mark.parametrize("code", ["network", "network2", "network3", "articles"])
def test_a_recorded_run_of_each_protocol_family_audits(code, data_dir):
    """The first epoch of the cheapest recorded run of each family, trained again: bit-identical
    on the kind of CPU and torch it was recorded with; elsewhere within float noise. Float noise
    after 5,000 steps can hide a protocol change, so what does not depend on rounding (split,
    pixels, data order, initial weights, selection rule) is checked on any CPU by
    tests/test_oracle_protocols.py and tests/test_record_rebuild.py."""
    path = _cheapest_record(code)
    if path is None:
        pytest.skip(f"no finished {code} run in the record yet")
    done = mnistbench("audit", "--epochs", "1", "--quiet", "--data-dir", str(data_dir), str(path))
    print(done.stdout)
    record = read_record(path)
    from mnistbench.train import cpu_kind, cpu_model
    import torch

    # The marketing name alone is not the kind of CPU: a VM calls Zen 3 and Zen 4 both "AMD EPYC".
    # A record made before cpu_kind was recorded cannot promise bit-identity anywhere.
    env = record["environment"]
    same_machine = ("cpu_kind" in env and (env.get("cpu_model"), env["cpu_kind"], env.get("torch"))
                    == (cpu_model(), cpu_kind(), torch.__version__))
    if same_machine:
        assert done.returncode == 0 and "bit-identical" in done.stdout, done.stdout + done.stderr
    else:  # another CPU adds in another order: only rounding may differ
        # 3: only the loss added in another order; 1: an accuracy moved too
        assert done.returncode in (0, 1, 3) and "STALE" not in done.stdout, done.stdout + done.stderr
        differences = done.stdout.split("; the same")[0]  # what matched follows
        for key, delta in [("test_accuracy", 0.5), ("val_accuracy", 0.5)]:
            if f"{key} " in differences:
                assert float(differences.split(f"{key} ")[1].split(",")[0].split(" ")[0]) <= delta


def test_readme_findings_are_generated_from_the_record():
    """The README's findings table is `mnistbench findings` of the tracked record, never typed."""
    from mnistbench.report import FINDINGS_END, FINDINGS_START, findings_table

    readme = (ROOT / "README.md").read_text()
    block = readme.split(FINDINGS_START, 1)[1].split(FINDINGS_END, 1)[0].strip()
    planned = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["studies"]["replication"]["recipes"]
    assert block == findings_table(RECORD, planned).strip(), "run `mnistbench findings --write` and commit README.md"
    # every number the study plans has its line, with runs or without them yet
    assert [r for r in planned if f"| `{r}`" not in block] == []


def test_a_variant_that_misses_its_number_says_which_reading_it_trained():
    """A variant (another reading of a source) whose verdict is above or below gives that reading
    and names the faithful recipe as its reason, in the record's own verdicts."""
    from mnistbench.verdicts import judge_recipes, load_metrics, load_tables

    runs, summary = load_tables(RECORD)
    rows = judge_recipes(runs, summary, load_metrics(runs, RECORD), pipeline_check=False)
    missed = [r for r in rows if r["variant"] and r["verdict"] in ("above", "below")]
    assert missed, "the record has no variant that misses its number: choose another check"
    for row in missed:
        assert row["variant"] in row["reason"] and f"`{row['published_id']}`" in row["reason"], row


def test_progress_shows_no_target_the_study_can_never_reach(tmp_path, capsys):
    """Five member runs make one ensemble group: a verdict needs three, which the study as
    configured never trains, so progress must not print "0/1 (needed 3)" as if it could."""
    spec = {"recipes": ["nielsen_ch6_ensemble_independent_masks", "nielsen_ch6_ensemble"],
            "seeds": [1, 2, 3, 4, 5],
            "per_recipe": {"nielsen_ch6_dropout": {"seeds": list(range(1, 16))}}}
    rows = {row["recipe"]: row for row in progress(spec, "s", tmp_path).rows}
    assert not rows["nielsen_ch6_ensemble_independent_masks"]["reachable"]
    assert rows["nielsen_ch6_ensemble"]["reachable"]  # 15 members: three groups
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"studies": {"s": spec}}))
    main(["progress", "--study", "s", "--config", str(tmp_path / "config.yaml"), "--results", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    masks = next(line for line in out if line.startswith("nielsen_ch6_ensemble_independent_masks"))
    assert "(3)" not in masks and "(-)*" in masks
    assert "(3)" in next(line for line in out if line.startswith("nielsen_ch6_ensemble "))
    assert any(line.startswith("* (-): the study plans fewer runs") for line in out)
