"""Training: SGD with momentum, poly schedule, head learning rate x10, checkpoints every
N iterations and an exact resume (a resumed run ends at the same weights)."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import IGNORE, atomic_path
from .checkpoints import fingerprint, load_checkpoint, save_checkpoint, write_log
from .config import TrainConfig
from .data import TrainData, batch_stream, median_frequency_weights
from .loss import cgl_loss
from .model import build_model, describe_init, freeze_bn


def poly_lr(base: float, it: int, total: int, power: float) -> float:
    return base * (1 - it / total) ** power


PROGRESS_EVERY_S = 60  # a progress line at least this often (and every 5% of the run)


def train(cfg: TrainConfig, data: TrainData, out_dir, log=None, stop_after: int | None = None):
    """Train and write OUT/model.pt, OUT/train_log.csv, OUT/checkpoint.pt (resume state).

    A run finds OUT/checkpoint.pt and continues from it. ``stop_after`` stops after that
    many iterations of this call (to test interruption). Returns the final model.
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    model, used = build_model(cfg, log)
    deeplab_protocol = cfg.protocol == "deeplab-pytorch"
    # deeplab-pytorch freezes BN whatever the init; the torchvision protocol only for a
    # pretrained backbone
    pretrained_bn = deeplab_protocol or used not in ("random", "random (download failed)")
    model.to(device)
    if deeplab_protocol:
        from . import deeplab

        groups = deeplab.param_groups(model, cfg.lr, cfg.weight_decay)
    else:
        groups = model.param_groups(cfg.lr, cfg.weight_decay)
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    weights = median_frequency_weights(data, cfg.n_classes).to(device) if cfg.class_balanced else None
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start = 0
    ckpt_path = out_dir / "checkpoint.pt"
    log_path = out_dir / "train_log.csv"
    state = load_checkpoint(ckpt_path, device, log) if ckpt_path.is_file() else None
    if state is not None and state.get("fingerprint") != fingerprint(cfg):
        log(f"{ckpt_path} was written by another config or code version: starting afresh")
        state = None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            from ..datasets import DatasetError

            raise DatasetError(f"{ckpt_path} is a checkpoint of another network (other class "
                             f"count, protocol or backbone: {str(e).splitlines()[0]}); delete it "
                             f"to start this training afresh") from None
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = state["iteration"]
        log(f"resuming from iteration {start} ({ckpt_path})")
        if deeplab_protocol:
            for k in range(start + 1):  # the lr the schedule had reached
                deeplab.poly_lr_step(opt, k, cfg.iterations, cfg.poly_power)
    rows = list(state.get("log_rows", [])) if state is not None else []
    t0 = last_line = time.time()
    done_here = 0
    batches = batch_stream(data, cfg, start)
    for it in range(start, cfg.iterations):
        model.train()
        if pretrained_bn:
            freeze_bn(model)
        if deeplab_protocol:
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for x, y in next(batches):  # iter_size sub-batches, gradients accumulated
                x, y = x.to(device), y.to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    outputs = model(x)
                sub_loss, _ = deeplab.msc_loss([o.float() for o in outputs], y, weights)
                scaler.scale(sub_loss / cfg.iter_size).backward()
                total += float(sub_loss.detach()) / cfg.iter_size
            scaler.step(opt)
            scaler.update()
            loss_value = total
            lr_now = opt.param_groups[0]["lr"]
            deeplab.poly_lr_step(opt, it + 1, cfg.iterations, cfg.poly_power)
        else:
            for g in opt.param_groups:
                g["lr"] = poly_lr(g["base_lr"], it, cfg.iterations, cfg.poly_power)
            x, y, w = next(batches)
            x, y, w = x.to(device), y.to(device), w.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            if weights is not None:
                up = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear",
                                   align_corners=False)
                loss = F.cross_entropy(up, y, weight=weights, ignore_index=IGNORE)
            else:
                loss = cgl_loss(logits.float(), y, w if cfg.loss == "soft" else None)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_value = float(loss.detach())
            lr_now = opt.param_groups[0]["lr"]
        rows.append({"iteration": it + 1, "loss": loss_value, "lr": lr_now,
                     "seconds": time.time() - t0})
        done_here += 1
        n = it + 1
        if (n % max(1, cfg.iterations // 20) == 0 or n == cfg.iterations
                or time.time() - last_line > PROGRESS_EVERY_S):
            last_line = time.time()
            rate = done_here / (time.time() - t0)
            eta = (cfg.iterations - n) / max(rate, 1e-9)
            log(f"[{'#' * (20 * n // cfg.iterations):<20}] {n}/{cfg.iterations} "
                f"loss {np.mean([r['loss'] for r in rows[-20:]]):.4f} "
                f"{rate:.2f} it/s, eta {eta:.0f} s")
        if n % cfg.checkpoint_every == 0 and n < cfg.iterations:
            save_checkpoint(ckpt_path, model, opt, scaler, n, cfg, rows)
            write_log(log_path, rows)
        if stop_after is not None and done_here >= stop_after:
            save_checkpoint(ckpt_path, model, opt, scaler, n, cfg, rows)
            write_log(log_path, rows)
            return model
    write_log(log_path, rows)
    if device.type == "cuda":
        log(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB (allocated)")
    with atomic_path(out_dir / "model.pt", suffix=".pt") as tmp:
        torch.save({"model": model.state_dict(), "config": asdict(cfg), "init": used}, tmp)
    from ..io import write_json

    write_json(out_dir / "train_info.json", describe_init(cfg, used))
    ckpt_path.unlink(missing_ok=True)
    return model
