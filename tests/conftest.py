"""Shared fixtures: where the real test data lives, and tmp copies of it.

The real slides and TCGA tables sit in ``../shared/testdata`` beside the checkout (read-only in CI).
Tests never write there: anything a test needs to modify is copied to a tmp dir first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO_ROOT.parent / "shared" / "testdata"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real test data not found at {path} (expected ../shared/testdata beside the repo)"
        )
    return path


@pytest.fixture(scope="session")
def testdata() -> Path:
    """Root of the shared real test data (read-only)."""
    return _require(SHARED_TESTDATA)


@pytest.fixture(scope="session")
def wsi_dir(testdata: Path) -> Path:
    return _require(testdata / "wsi")


@pytest.fixture(scope="session")
def tcga_dir(testdata: Path) -> Path:
    return _require(testdata / "tcga")


@pytest.fixture(scope="session")
def cmu_small(wsi_dir: Path) -> Path:
    """The real Aperio CMU-1-Small-Region.svs (2220 x 2967, 0.499 µm/px, H&E)."""
    return _require(wsi_dir / "aperio" / "CMU-1-Small-Region.svs")


@pytest.fixture()
def tmp_copy(tmp_path: Path):
    """Copy a file or directory from the read-only shared data into tmp_path; return the copy."""

    def _copy(src: Path) -> Path:
        dst = tmp_path / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return dst

    return _copy


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy shared machine, and extra
    threads gain nothing at these sizes. Modules opt in with ``pytestmark``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
