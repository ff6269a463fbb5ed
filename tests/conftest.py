"""Shared fixtures: the golden parity set and a runner for the stage scripts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def golden_dir() -> Path:
    return Path(os.environ.get("CLIPES_GOLDEN_DIR", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def golden() -> Path:
    g = golden_dir()
    if not (g / "clip_tiny.pt").is_file():
        pytest.skip(f"golden set not found at {g} (set CLIPES_GOLDEN_DIR)")
    return g


def run_script(name: str, *args, check: bool = True, folder: str = "scripts"
               ) -> subprocess.CompletedProcess:
    """Run <folder>/<name>.py (a stage script, or folder="benchmarks") with the test's
    Python; returns the finished process."""
    cmd = [sys.executable, str(REPO / folder / f"{name}.py"), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_benchmark(name: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """Run benchmarks/<name>.py with the test's Python; returns the finished process."""
    return run_script(name, *args, check=check, folder="benchmarks")


@pytest.fixture(scope="session")
def tiny_clip(golden):
    from clipes.model import load_clip

    return load_clip(checkpoint=golden / "clip_tiny.pt")
