"""One GPU per job on a machine with several: device slots held through file locks.

Snakemake's ``--resources gpu=N`` lets N GPU jobs run at once but does not say which GPU
each should use. A GPU stage calls :func:`acquire` before it touches CUDA: it takes the
first free slot of the machine (an exclusive ``flock`` on ``<lock dir>/slot<i>.lock``),
sets ``CUDA_VISIBLE_DEVICES`` to that slot's device, and keeps the lock until the process
ends (a killed job frees its slot too: the kernel drops the lock).

Slots: ``CLIPES_GPU_SLOTS`` if set (also how the tests fake devices on a CPU), else the
GPUs of the machine (``/proc/driver/nvidia/gpus``, read without initialising CUDA), or the
ids already in ``CUDA_VISIBLE_DEVICES``. Where a scheduler gave the job exactly one GPU
(SLURM's ``--gpus=1`` sets ``CUDA_VISIBLE_DEVICES`` to it), or the machine has one, nothing
is locked. Lock folder: ``CLIPES_GPU_LOCK_DIR``, default ``/tmp/clipes-gpu-slots-<uid>``.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

_HELD: list = []  # open lock files, kept for the life of the process


def _devices() -> list[str]:
    """Device ids a job may choose from ([] or one: nothing to choose)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    slots = os.environ.get("CLIPES_GPU_SLOTS")
    if slots is not None:
        n = int(slots)
        if visible:
            ids = [v for v in visible.split(",") if v.strip()]
            return ids[:n] if len(ids) >= n else [str(i) for i in range(n)]
        return [str(i) for i in range(n)]
    if visible is not None:
        return [v for v in visible.split(",") if v.strip()]
    gpus = Path("/proc/driver/nvidia/gpus")
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    return [str(i) for i in range(count)]


def lock_dir() -> Path:
    default = Path("/tmp") / f"clipes-gpu-slots-{os.getuid()}"
    return Path(os.environ.get("CLIPES_GPU_LOCK_DIR", default))


def acquire(poll: float = 1.0, log=None) -> int | None:
    """Take a free device slot and restrict CUDA to it; None where there is no choice.

    Waits for a slot when all are held (Snakemake's gpu resource normally prevents that).
    Call it before CUDA is initialised; a second call returns the slot already held.
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    if _HELD:
        return _HELD[0][0]
    devices = _devices()
    if len(devices) <= 1:
        return None
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for i, dev in enumerate(devices):
            f = open(folder / f"slot{i}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            _HELD.append((i, f))
            os.environ["CUDA_VISIBLE_DEVICES"] = dev
            log(f"gpu slot {i} of {len(devices)} (CUDA_VISIBLE_DEVICES={dev}), pid {os.getpid()}, "
                f"at {time.time():.3f}")
            return i
        if not waited:
            log(f"all {len(devices)} gpu slots in {folder} are held; waiting for one")
            waited = True
        time.sleep(poll)
