"""Checkpoints and logs of a training run: data-only loading (no pickle code runs), the
resume state and its fingerprint, the loss log (CSV) and its plot."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import torch

from ..io import atomic_path
from .config import TrainConfig

_LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError)


def _as_data(path, device):
    """(state, None), or (None, why) where the file cannot be loaded as data only."""
    import pickle
    import warnings

    try:  # weights_only: tensors, numbers, strings and containers; no pickle code runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle protocol notes
            return torch.load(path, map_location=device, weights_only=True), None
    except (pickle.UnpicklingError, *_LOAD_ERRORS) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        # torch's message opens with advice to load the file unsafely: keep the cause only
        cause = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0])
        return None, cause.replace("WeightsUnpickler error: ", "")[:200]


def load_tensors(path, device="cpu", what: str = "checkpoint"):
    """torch.load of a file as data only; a file that is not such data (damaged, or holding
    code, which is never run) is a one-line error naming it."""
    state, why = _as_data(path, device)
    if why is not None:
        from ..datasets import DatasetError

        raise DatasetError(f"{path}: the {what} cannot be loaded as plain tensors and numbers "
                           f"({why}); it is damaged, or holds code, which is never run: "
                           f"delete it, or retrain")
    return state


def load_checkpoint(path: Path, device, log):
    """The resume state, or None after setting aside a file that cannot be loaded as data
    (cut short by a crash or a full disk while it was copied, or holding code): it is
    renamed to checkpoint.pt.damaged-<n>, the log says so, and training starts afresh."""
    state, why = _as_data(path, device)
    if why is None:
        return state
    n = 0
    while path.with_name(f"{path.name}.damaged-{n}").exists():
        n += 1
    aside = path.with_name(f"{path.name}.damaged-{n}")
    path.rename(aside)
    log(f"warning: {path} cannot be loaded as plain tensors and numbers ({why}): set aside "
        f"as {aside.name}, training starts afresh")
    return None


def fingerprint(cfg: TrainConfig) -> str:
    """Hash of what a training's result depends on: its config (less the knobs that do not
    change results: data loader workers, checkpoint interval) and the training code."""
    import hashlib
    import json

    d = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "checkpoint_every")}
    code = b"".join(f.read_bytes() for f in sorted(Path(__file__).parent.glob("*.py")))
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode() + code).hexdigest()


def save_checkpoint(path, model, opt, scaler, iteration, cfg, rows):
    """Model, optimiser and log rows in one file, written atomically: the log of a resumed
    run continues from exactly the checkpoint's iteration."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict(), "iteration": iteration,
                    "fingerprint": fingerprint(cfg), "log_rows": list(rows)}, tmp)


def write_log(path, rows):
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["iteration", "loss", "lr", "seconds"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def plot_log(log_csv, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(log_csv)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(df["iteration"], df["loss"], lw=0.8, color="tab:blue", alpha=0.5)
    ax.plot(df["iteration"], df["loss"].rolling(20, min_periods=1).mean(), color="tab:blue")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(df["iteration"], df["lr"], color="tab:orange")
    ax2.set_ylabel("backbone lr", color="tab:orange")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
