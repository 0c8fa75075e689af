"""Bad input to mnistbench's commands: one clear line, a nonzero exit, no traceback, nothing that looks finished.

One test per case: CLI misuse, bad hyperparameters, missing or damaged MNIST files, an output
folder that cannot be written, truncated or foreign checkpoints. A diverging run is not an error:
it ends normally with status "diverged".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnistbench.data import MNIST_FILES
from mnistbench.recipes import all_recipes, get_recipe
from mnistbench.report import FINDINGS_END, FINDINGS_START
from mnistbench.train import train

TINY = ["--epochs", "1", "--train-subset", "100", "--device", "cpu", "--threads", "1", "--quiet"]


def mnistbench(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnistbench", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, out: Path | None = None) -> str:
    """Exit 2, a single `mnistbench: error:` line naming the problem, no traceback, no results."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("mnistbench: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    if out is not None:
        assert not (out / "metrics.json").exists()
        assert not (out / "model.pt").exists()
    return lines[0]


def train_args(out: Path, recipe: str = "tutorial_cnn_nll", *extra: str) -> list[str]:
    return ["train", "--recipe", recipe, "--seed", "1", *TINY, "--out", str(out), *extra]


# --- CLI misuse ------------------------------------------------------------------------------

def test_no_command():
    assert_one_line_error(mnistbench(), "required")


def test_unknown_command():
    assert_one_line_error(mnistbench("fit"), "invalid choice: 'fit'")


def test_missing_required_option(tmp_path):
    assert_one_line_error(mnistbench("train", "--recipe", "tutorial_cnn_nll", "--seed", "1"), "--out")


def test_unknown_option(tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(mnistbench(*train_args(out), "--learning-rate", "0.1"), "--learning-rate", out=out)


def test_unknown_recipe_lists_the_valid_ones(tmp_path):
    out = tmp_path / "run"
    line = assert_one_line_error(mnistbench(*train_args(out, "tutorial_cnn")), "'tutorial_cnn'", out=out)
    assert all(recipe in line for recipe in all_recipes())


def test_ensemble_recipe_cannot_be_trained_directly(tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(mnistbench(*train_args(out, "nielsen_ch6_ensemble")), "nielsen_ch6_dropout", out=out)


# --- hyperparameters -------------------------------------------------------------------------

@pytest.mark.parametrize("lr", ["0", "-0.1", "nan", "inf", "fast"])
def test_learning_rate_must_be_a_positive_number(lr, tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(mnistbench(*train_args(out), f"--lr={lr}"), "--lr", out=out)


@pytest.mark.parametrize("epochs", ["0", "-1", "1.5"])
def test_epochs_must_be_a_positive_integer(epochs, tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(mnistbench(*train_args(out), f"--epochs={epochs}"), "--epochs", out=out)


@pytest.mark.parametrize("seed", ["1.5", "one", ""])
def test_seed_must_be_an_integer(seed, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--recipe", "tutorial_cnn_nll", f"--seed={seed}", *TINY, "--out", str(out)]
    assert_one_line_error(mnistbench(*args), "--seed", out=out)


def test_subset_larger_than_the_data(data_dir, tmp_path):
    out = tmp_path / "run"
    args = train_args(out, "nielsen_ch1_fc30", "--train-subset", "50001")  # the book trains on 50,000
    assert_one_line_error(mnistbench(*args), "50000", out=out)


# --- output folder ---------------------------------------------------------------------------

def test_output_folder_below_a_file(data_dir, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    out = blocker / "run"
    assert_one_line_error(mnistbench(*train_args(out)), "cannot write", str(out))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; covered by the "
                    "folder-below-a-file case")
def test_read_only_output_folder(data_dir, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o555)
    try:
        out = results / "run"
        assert_one_line_error(mnistbench(*train_args(out)), "cannot write", out=out)
    finally:
        results.chmod(0o755)


# --- MNIST files -----------------------------------------------------------------------------

def offline_env(data_root: Path) -> dict:
    """Point the run at data_root, with no local mirror to copy MNIST from."""
    env = {k: v for k, v in os.environ.items() if k != "MNISTBENCH_MNIST_MIRROR"}
    env["MNISTBENCH_DATA_DIR"] = str(data_root)
    return env


def copy_mnist(data_dir: Path, to: Path, unpacked: bool) -> Path:
    raw = to / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (data_dir / "MNIST" / "raw").iterdir():
        if path.name in MNIST_FILES or (unpacked and path.name.endswith("-ubyte")):
            shutil.copyfile(path, raw / path.name)
    return raw


def test_missing_mnist_fails_fast(tmp_path):
    out, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()
    # No mirror and (on these machines) no route to the download sites: a clear message within
    # the timeout, not a hang.
    result = mnistbench(*train_args(out), env=offline_env(empty), timeout=120)
    assert_one_line_error(result, "MNIST not found", "train-images-idx3-ubyte.gz", out=out)


def test_audit_without_mnist_says_where_to_put_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    record = Path("results/replication/runs/nielsen_ch6_ensemble/lr=0.03/group=1/metrics.json")
    result = mnistbench("audit", str(Path(__file__).parents[1] / record), env=offline_env(empty), timeout=120)
    assert_one_line_error(result, "MNIST not found", "train-images-idx3-ubyte.gz")


def test_download_without_a_route_says_where_to_put_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = mnistbench("download", "--data-dir", str(empty), env=offline_env(empty), timeout=120)
    assert_one_line_error(result, "MNIST not found", "train-images-idx3-ubyte.gz")


def test_corrupted_archive(data_dir, tmp_path):
    raw = copy_mnist(data_dir, tmp_path / "data", unpacked=False)
    archive = raw / "train-labels-idx1-ubyte.gz"
    damaged = bytearray(archive.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    archive.write_bytes(bytes(damaged))
    out = tmp_path / "run"
    result = mnistbench(*train_args(out), env=offline_env(tmp_path / "data"))
    assert_one_line_error(result, "train-labels-idx1-ubyte.gz", "corrupted", out=out)


def test_truncated_archive(data_dir, tmp_path):
    raw = copy_mnist(data_dir, tmp_path / "data", unpacked=False)
    archive = raw / "t10k-images-idx3-ubyte.gz"
    os.truncate(archive, archive.stat().st_size // 3)
    out = tmp_path / "run"
    result = mnistbench(*train_args(out), env=offline_env(tmp_path / "data"))
    assert_one_line_error(result, "t10k-images-idx3-ubyte.gz", "truncated", out=out)


def test_truncated_unpacked_file(data_dir, tmp_path):
    raw = copy_mnist(data_dir, tmp_path / "data", unpacked=True)
    unpacked = raw / "train-images-idx3-ubyte"
    if not unpacked.exists():  # torchvision unpacks on first use
        mnistbench(*train_args(tmp_path / "unpack"), env=offline_env(tmp_path / "data"))
    os.truncate(unpacked, 16 + 28 * 28 * 1000)  # the header and 1,000 of 60,000 images
    out = tmp_path / "run"
    result = mnistbench(*train_args(out), env=offline_env(tmp_path / "data"))
    assert_one_line_error(result, str(raw), "could not be read", out=out)


# --- checkpoints -----------------------------------------------------------------------------

class _Stop(Exception):
    pass


def interrupted_checkpoint(path: Path, seed: int) -> None:
    """The checkpoint a 2-epoch run of the TINY configuration leaves when it stops after epoch 1."""
    recipe = get_recipe("tutorial_cnn_nll").with_overrides(epochs=2, train_subset=100)

    def stop_in_epoch_2(entry):
        if entry["epoch"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(recipe, seed, device="cpu", checkpoint=path, on_epoch=stop_in_epoch_2)
    assert len(torch.load(path, weights_only=True)["history"]) == 1


def resume_args(out: Path, seed: int = 1) -> list[str]:
    return ["train", "--recipe", "tutorial_cnn_nll", "--seed", str(seed), "--epochs", "2",
            "--train-subset", "100", "--device", "cpu", "--threads", "1", "--quiet", "--out", str(out)]


def test_truncated_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    checkpoint = out / "checkpoint.pt"
    interrupted_checkpoint(checkpoint, seed=1)
    os.truncate(checkpoint, checkpoint.stat().st_size // 2)
    assert_one_line_error(mnistbench(*resume_args(out)), str(checkpoint), "unreadable", out=out)
    assert checkpoint.exists()  # left for the user to inspect or delete, never silently replaced


def test_checkpoint_of_another_run(data_dir, tmp_path):
    out = tmp_path / "run"
    checkpoint = out / "checkpoint.pt"
    interrupted_checkpoint(checkpoint, seed=2)
    before = checkpoint.read_bytes()
    assert_one_line_error(mnistbench(*resume_args(out, seed=1)), str(checkpoint), "another run", out=out)
    assert checkpoint.read_bytes() == before


def test_file_that_is_no_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"weights": torch.zeros(3)}, out / "checkpoint.pt")  # a torch file, but not ours
    assert_one_line_error(mnistbench(*resume_args(out)), "checkpoint", "another run", out=out)
    (out / "checkpoint.pt").write_text("hello")  # not even a torch file
    assert_one_line_error(mnistbench(*resume_args(out)), "checkpoint", "unreadable", out=out)


# --- divergence ------------------------------------------------------------------------------

def test_diverging_run_is_recorded_as_diverged(data_dir, tmp_path):
    out = tmp_path / "run"
    result = mnistbench("train", "--recipe", "tutorial_cnn_nll", "--seed", "1", "--lr", "1e6",
                        "--epochs", "3", "--train-subset", "300", "--device", "cpu", "--threads", "1",
                        "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text(),  # strict JSON: no NaN or Infinity
                         parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))
    assert metrics["status"] == "diverged"
    assert metrics["history"][-1]["diverged"] is True
    assert len(metrics["history"]) < 3  # training stopped at the first non-finite loss
    assert not (out / "checkpoint.pt").exists()
    assert "diverged" in result.stderr.lower()


# --- other commands --------------------------------------------------------------------------

def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    """`mnistbench recipes --json | head -c 10`: no BrokenPipeError traceback, SIGPIPE's status."""
    command = [sys.executable, "-m", "mnistbench", "recipes", "--json"]
    read, write = os.pipe()
    with subprocess.Popen(command, stdout=write, stderr=subprocess.PIPE) as proc:
        os.close(write)
        # The reader leaves before the command has written (as `head` does once it has its
        # lines); its whole output fits in a pipe's buffer, so leaving later would be a race.
        os.close(read)
        stderr = proc.stderr.read().decode()
    assert stderr == "" and proc.returncode == 141, (proc.returncode, stderr)


@pytest.mark.parametrize("content, problem", [
    ('{"recipe": "x\x01"}', "Invalid control character"),
    ("", "Expecting value"),
    ("[1]", "a JSON list, not an object"),
    ('{"seed": 1}', "no 'recipe' key"),
    ('{"recipe": "nielsen_ch1_fc30", "config": [1]}', "'list' object has no attribute 'get'"),
])
def test_aggregate_names_the_broken_run_record(tmp_path, content, problem):
    study = tmp_path / "study"
    good = study / "runs" / "nielsen_ch1_darkness" / "lr=none" / "seed=1" / "metrics.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps({"recipe": "nielsen_ch1_darkness", "seed": 1, "status": "finished"}))
    broken = study / "runs" / "nielsen_ch1_fc30" / "lr=3" / "seed=2" / "metrics.json"
    broken.parent.mkdir(parents=True)
    broken.write_text(content)
    line = assert_one_line_error(mnistbench("aggregate", str(study)), problem)
    assert f"broken run record {broken}: " in line
    assert not (study / "runs.csv").exists()


def test_findings_of_a_mistyped_study_folder_leave_the_readme_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{FINDINGS_START}\n| the table |\n{FINDINGS_END}\n")
    before = readme.read_text()
    result = mnistbench("findings", "--study-dir", str(tmp_path / "results" / "replicaton"),
                        "--readme", str(readme))
    assert_one_line_error(result, "no such study folder", "replicaton")
    assert readme.read_text() == before


def test_docs_outside_the_project_root(tmp_path):
    assert_one_line_error(mnistbench("docs", cwd=tmp_path), "from the project root")
    assert not list(tmp_path.iterdir())


def test_every_command_says_in_its_help_what_it_does_reads_writes_and_costs():
    from mnistbench.cli import COMMANDS, DESCRIPTIONS, build_parser

    assert set(DESCRIPTIONS) == set(COMMANDS)
    for command in COMMANDS:
        # compared without whitespace: argparse rewraps the text (and breaks after hyphens)
        text = "".join(build_parser()._subparsers._group_actions[0].choices[command].format_help().split())
        assert "".join(DESCRIPTIONS[command].split()) in text, command
    assert "exit status 0" in DESCRIPTIONS["audit"].lower() and "3: numerically different" in DESCRIPTIONS["audit"]


def test_the_independent_masks_ensemble_names_its_own_members():
    from mnistbench.card import render_card

    card = render_card("nielsen_ch6_ensemble_independent_masks")
    assert "5 x nielsen_ch6_dropout_independent_masks" in card
    assert "5 x nielsen_ch6_dropout;" not in card and "5 x nielsen_ch6_dropout " not in card
    listing = mnistbench("recipes").stdout
    line = next(l for l in listing.splitlines() if l.startswith("nielsen_ch6_ensemble_independent_masks"))
    assert "5 x nielsen_ch6_dropout_independent_masks" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_throughput_benchmark_without_a_gpu_says_so():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cuda"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no CUDA device" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_single_run_defaults_to_one_thread_and_says_so(data_dir, tmp_path):
    """At mini-batch 10 a second thread costs up to 10x when another process is busy."""
    args = ["--epochs", "1", "--train-subset", "100", "--device", "cpu"]
    done = mnistbench("train", "--recipe", "nielsen_ch1_fc30", "--seed", "1", *args,
                      "--data-dir", str(data_dir), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "torch threads: 1 (the default at mini-batch 10" in done.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["environment"]["threads"] == 1
    done = mnistbench("train", "--recipe", "nielsen_ch1_fc30", "--seed", "1", *args, "--threads", "2",
                      "--data-dir", str(data_dir), "--out", str(tmp_path / "two"))
    assert "torch threads: 2 (as asked with --threads)" in done.stderr


def test_docs_and_findings_rewrite_tracked_files_only_with_write(tmp_path):
    """Both read by default (exit 1 when out of date) and write only with --write."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "recipes.md").write_text("stale\n")
    shutil.copy(root / "docs" / "protocols.md", tmp_path / "docs" / "protocols.md")
    checked = mnistbench("docs", cwd=tmp_path)
    assert checked.returncode == 1 and "out of date: docs/recipes.md" in checked.stderr
    assert (tmp_path / "docs" / "recipes.md").read_text() == "stale\n"
    assert mnistbench("docs", "--write", cwd=tmp_path).returncode == 0
    assert (tmp_path / "docs" / "recipes.md").read_text().startswith("# Recipes")
    assert mnistbench("docs", cwd=tmp_path).returncode == 0

    readme = tmp_path / "README.md"
    readme.write_text(f"{FINDINGS_START}\n| an old table |\n{FINDINGS_END}\n")
    study = tmp_path / "results" / "empty"
    study.mkdir(parents=True)
    shown = mnistbench("findings", "--study-dir", str(study), "--readme", str(readme))
    assert shown.returncode == 1 and "No finished runs in the record yet." in shown.stdout
    assert "an old table" in readme.read_text() and "--write" in shown.stderr
    assert mnistbench("findings", "--study-dir", str(study), "--readme", str(readme), "--write").returncode == 0
    assert "No finished runs in the record yet." in readme.read_text()


def test_reading_commands_without_mnist_say_so_in_one_line(monkeypatch, capsys):
    """`findings` and `report` score the ensemble's votes on MNIST's test labels: without MNIST
    they end in the same one-line error as training, not a traceback."""
    from mnistbench import cli, data

    def missing(*args, **kwargs):
        raise data.DataError("MNIST not found in data/MNIST/raw")
    monkeypatch.setattr(data, "load_mnist", missing)
    assert cli.main(["findings"]) == 2
    assert capsys.readouterr().err.splitlines() == ["mnistbench: error: MNIST not found in data/MNIST/raw"]
