"""The image build files are multi-stage, non-root, run `xinhe`, and copy
only what exists and what their .dockerignore lets through. (No container
engine here: the images themselves are not built in CI.)"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.chart import ROOT

DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    words = [ln.split(None, 1) for ln in lines if ln and not ln.startswith("#")]
    return [(w[0].upper(), w[1] if len(w) > 1 else "") for w in words]


def test_both_images_have_build_files() -> None:
    assert {p.name for p in DOCKERFILES} == {"controlplane.Dockerfile", "agent.Dockerfile"}
    assert "not built in CI" in (DOCKER / "README.md").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_multi_stage_non_root_and_runs_xinhe(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) >= 2 and " AS " in stages[0].upper(), "a build stage, then the runtime"
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the runtime stage runs non-root"
    entrypoint = [json.loads(args) for op, args in final if op == "ENTRYPOINT"]
    assert entrypoint == [["xinhe"]]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "xinhe" in project["scripts"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_sources_exist_and_pass_the_dockerignore(dockerfile: Path) -> None:
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    for op, args in instructions(dockerfile):
        if op != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            assert included(source, rules), f"{dockerfile.name}: .dockerignore drops {source}"


def included(path: str, rules: list[str]) -> bool:
    """Docker's .dockerignore semantics: the last matching rule wins; ! re-includes."""
    keep = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path.rstrip("/"), pattern):
            keep = negate
    return keep
