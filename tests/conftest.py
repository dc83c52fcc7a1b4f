"""Shared fixtures: the sample stores, built once per test session with MLflow's own client."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trackport.samples.sample_store import build_sample_store

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # lets MLflow's client read mlruns/ in tests


@pytest.fixture(scope="session")
def sample_sqlite(tmp_path_factory) -> str:
    """URI of the sample sqlite store. Read it; never write into it."""
    return build_sample_store(tmp_path_factory.mktemp("sample-sqlite"), "sqlite")


@pytest.fixture(scope="session")
def sample_mlruns(tmp_path_factory) -> str:
    return build_sample_store(tmp_path_factory.mktemp("sample-mlruns"), "mlruns")


@pytest.fixture(scope="session")
def sample_bundle(tmp_path_factory, sample_sqlite) -> Path:
    """A complete bundle exported from the sample sqlite store. Copy it before damaging it."""
    from trackport.stores import open_bundle_sink, open_source
    from trackport.stores.base import Selection
    from trackport.transfer import transfer

    path = tmp_path_factory.mktemp("bundle") / "sample"
    summary = transfer(open_source(sample_sqlite), open_bundle_sink(str(path)), Selection(include_deleted=True))
    assert summary.failed == 0, summary.failures
    return path


@pytest.fixture
def bundle_copy(sample_bundle, tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(sample_bundle, target, symlinks=True)
    return target
