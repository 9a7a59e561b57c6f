"""Shared fixtures: where the built guest programs are, and a private compile cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "build" / "guests"
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def guests() -> Path:
    if not (GUESTS / "pie" / "main.wasm").exists():
        pytest.fail("guest programs are not built: run scripts/build-guests (scripts/test does)")
    return GUESTS


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                  ) -> Path:
    """Every test session compiles into its own cache, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "compile-cache"
    monkeypatch.setenv("WASMGROUP_CACHE", str(cache))
    return cache


def cli_env() -> dict[str, str]:
    return {**os.environ}
