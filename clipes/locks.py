"""Snakemake's directory lock after an interrupted run (standard library only: the
workflow's own process calls it)."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def other_snakemake_here(cwd: str | None = None) -> bool:
    """Whether another snakemake process of this machine works in ``cwd`` (default: the
    current folder). Processes on other machines cannot be seen."""
    here = os.path.realpath(cwd or os.getcwd())
    skip = {os.getpid(), os.getppid()}
    if not PROC.is_dir():
        return False
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if any(b"snakemake" in c for c in cmd[:3]) and os.path.realpath(entry / "cwd") == here:
                return True
        except OSError:
            continue
    return False


def stale_lock(workdir: str = ".") -> bool:
    """A lock file remains in .snakemake/locks and no local snakemake works here."""
    locks = Path(workdir, ".snakemake", "locks")
    return locks.is_dir() and any(locks.iterdir()) and not other_snakemake_here(workdir)
