"""The container image installs only hash-pinned packages, at the versions the tests use."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
MARKER_ENV = {"extra": "", "python_version": "3.11", "sys_platform": "linux"}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure() -> dict[str, str]:
    """The installed runtime dependencies of fleet-bridge (name → version)."""
    seen: dict[str, str] = {}

    def walk(name: str) -> None:
        dist = md.distribution(name)
        key = _key(dist.metadata["Name"])
        if key in seen:
            return
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(MARKER_ENV):
                walk(req.name)

    walk("fleet-bridge")
    del seen["fleet-bridge"]
    return seen


def locked() -> dict[str, tuple[str, list[str]]]:
    text = (ROOT / "image-requirements.txt").read_text().replace("\\\n", " ")
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pin, *options = line.split()
        name, version = pin.split("==")
        out[_key(name)] = (version, [o.removeprefix("--hash=sha256:") for o in options])
    return out


def test_the_lock_pins_every_runtime_package_at_the_tested_version_with_hashes() -> None:
    lock = locked()
    runtime = runtime_closure()
    constraints = {
        _key(n): v
        for n, v in (
            line.split("==")
            for line in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line
        )
    }
    assert set(lock) == set(runtime) | {"setuptools", "wheel"}
    for name, version in runtime.items():
        assert lock[name][0] == version == constraints[name], name
    for name, (_, hashes) in lock.items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_the_dockerfile_installs_only_from_the_hashed_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [
        cmd.strip()
        for cmd in re.split(r"&&|\bRUN\b", dockerfile.replace("\\\n", " "))
        if "pip install" in cmd
    ]
    assert installs == [
        "pip install --no-cache-dir --require-hashes --only-binary=:all: -r image-requirements.txt",
        "pip install --no-cache-dir --no-deps --no-build-isolation .",
    ]
    assert "!image-requirements.txt" in (ROOT / ".dockerignore").read_text().splitlines()
