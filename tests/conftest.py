"""Shared test helpers.

Peer libraries (SpikingJelly, snnTorch, Norse, tonic, nir) are optional for users; `make
test` installs them and sets SPIKEGRAD_REQUIRE_PEERS=1 so a missing peer fails instead of
skipping.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch


def require_peer(module: str):
    """Import a peer library, skipping (or failing under SPIKEGRAD_REQUIRE_PEERS=1) if absent."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("SPIKEGRAD_REQUIRE_PEERS") == "1":
            pytest.fail(f"peer library {module!r} is required here but cannot be imported: {exc}")
        pytest.skip(f"peer library {module!r} is not installed")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
