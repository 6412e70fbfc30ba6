"""Every Python package of the project is shipped by pyproject.toml, and the
job-side runtime installs under its own import name."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed_packages() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["tool"]["setuptools"]["packages"])


def test_every_package_directory_is_listed() -> None:
    found = set()
    for top in ("controlplane", "agents"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    missing = found - listed_packages()
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_runtime_and_protos_install_under_their_own_names() -> None:
    assert {"xinhe", "xinhe.v1", "xinhe_runtime"} <= listed_packages()
