"""Shared fixtures: the real MNIST files, never the read-only shared copy itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mnistbench.data import MNIST_FILES

ROOT = Path(__file__).resolve().parents[1]
SHARED_RAW = ROOT.parent / "shared" / "data" / "mnist" / "MNIST" / "raw"


def _has_mnist(root: Path) -> bool:
    return all((root / "MNIST" / "raw" / name).exists() for name in MNIST_FILES)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data root holding MNIST/raw/*.gz: $MNISTBENCH_DATA_DIR, ./data, or a copy of ../shared."""
    for candidate in (os.environ.get("MNISTBENCH_DATA_DIR"), ROOT / "data"):
        if candidate and _has_mnist(Path(candidate)):
            return Path(candidate).resolve()
    if not all((SHARED_RAW / name).exists() for name in MNIST_FILES):
        pytest.skip(f"MNIST not found: set MNISTBENCH_DATA_DIR or copy the four files to {ROOT / 'data/MNIST/raw'}")
    root = tmp_path_factory.mktemp("mnist")
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(SHARED_RAW / name, root / "MNIST" / "raw" / name)
    return root


@pytest.fixture(autouse=True)
def _data_env(monkeypatch, request):
    """Point MNISTBENCH_DATA_DIR at the real files for every test that asks for data_dir."""
    if "data_dir" in request.fixturenames:
        monkeypatch.setenv("MNISTBENCH_DATA_DIR", str(request.getfixturevalue("data_dir")))
