"""The end-to-end tier: tests against a real cluster on this machine (cluster/local/up.sh).

They run only with GANOPS_E2E=1 (as root: the cluster needs namespaces, mounts and cgroups),
and are marked ``e2e`` so that ``pytest -m e2e`` selects them.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than in pyproject.toml: the tier lives in this directory.
    config.addinivalue_line("markers", "e2e: needs a real cluster (cluster/local/up.sh); runs only with GANOPS_E2E=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("GANOPS_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="end-to-end: set GANOPS_E2E=1 to run (starts a real cluster, as root)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)
