"""Shared fixtures: the real MNIST files, never the read-only shared copy itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mnistbench.data import MNIST_FILES

ROOT = Path(__file__).resolve().parents[1]
SHARED_RAW = ROOT.parent / "shared" / "data" / "mnist" / "MNIST" / "raw"


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs `-n auto`, a worker per core), each worker gets its
    share of torch's threads: with torch's default of a thread per core in every worker, two
    workers on two cores would each spin on both."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def _has_mnist(root: Path) -> bool:
    return all((root / "MNIST" / "raw" / name).exists() for name in MNIST_FILES)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data root holding MNIST/raw/*.gz: $MNISTBENCH_DATA_DIR, ./data, or a copy of the files
    in $MNISTBENCH_MNIST_MIRROR (CI sets it) or ../shared."""
    for candidate in (os.environ.get("MNISTBENCH_DATA_DIR"), ROOT / "data"):
        if candidate and _has_mnist(Path(candidate)):
            return Path(candidate).resolve()
    mirrors = [Path(m) for m in (os.environ.get("MNISTBENCH_MNIST_MIRROR"), SHARED_RAW) if m]
    mirror = next((m for m in mirrors if all((m / name).exists() for name in MNIST_FILES)), None)
    if mirror is None:
        pytest.skip(f"MNIST not found: set MNISTBENCH_MNIST_MIRROR or MNISTBENCH_DATA_DIR, or copy "
                    f"the four files to {ROOT / 'data/MNIST/raw'}")
    root = tmp_path_factory.mktemp("mnist")
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(mirror / name, root / "MNIST" / "raw" / name)
    return root


@pytest.fixture(autouse=True)
def _data_env(monkeypatch, request):
    """Point MNISTBENCH_DATA_DIR at the real files for every test that asks for data_dir."""
    if "data_dir" in request.fixturenames:
        monkeypatch.setenv("MNISTBENCH_DATA_DIR", str(request.getfixturevalue("data_dir")))


SLURM_SHIM_ENV = "MNISTBENCH_TEST_NO_SCONTROL"


@pytest.fixture(scope="session", autouse=True)
def _no_slurm_controller_wait(tmp_path_factory):
    """A `scontrol` that fails at once, first on PATH, for every test but the Slurm one.

    snakemake-executor-plugin-slurm runs `scontrol show config` when Snakemake starts (any
    executor). Where Slurm is installed but no controller runs (CI, between Slurm tests), that
    call waits 10 s: about 30 Snakemake starts in this suite would wait 5 minutes for nothing.
    tests/test_slurm.py takes this folder off PATH again (slurm_env below).
    """
    shim = tmp_path_factory.mktemp("no-scontrol")
    (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (shim / "scontrol").chmod(0o755)
    saved = {name: os.environ.get(name) for name in ("PATH", SLURM_SHIM_ENV)}
    os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ[SLURM_SHIM_ENV] = str(shim)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def slurm_env() -> dict:
    """os.environ with the real `scontrol` back on PATH (see _no_slurm_controller_wait)."""
    shim = os.environ.get(SLURM_SHIM_ENV)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != shim]
    return {**os.environ, "PATH": os.pathsep.join(path)}
