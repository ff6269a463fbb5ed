"""Model input sizes and the CAM stage's memory estimate (no torch: the preparation and
the workflow's checks use them before any model is loaded)."""

from __future__ import annotations

import math

from .errors import DatasetError


def input_size(orig_hw: tuple[int, int], patch: int = 16,
               max_side: int | None = None) -> tuple[int, int]:
    """Model input size: height and width rounded UP to a multiple of the patch size (the
    reference). With ``max_side``, an image whose long side exceeds it is first scaled
    down (aspect kept) so that the long side is max_side; the CAMs are still returned at
    the original size."""
    h, w = orig_hw
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    return int(math.ceil(h / patch) * patch), int(math.ceil(w / patch) * patch)


# Peak memory of the CAM stage for one image, ViT-B/16 on the CPU: the process's baseline
# plus the attention maps, quadratic in the tokens. Fitted to peak RSS of scripts/cams.py
# (reference mode, the larger of the two) at 320x320, 640x480, 960x720 and 1280x960 input,
# with a margin; README "Scale" lists the measurements.
CAM_BASE_MB = 1600.0
CAM_MB_PER_TOKEN2 = 260e-6


def memory_estimate_mb(input_hw: tuple[int, int], patch: int = 16) -> float:
    """Approximate peak memory (MB) of the CAM stage for one image of model input size
    ``input_hw`` (see :func:`input_size`)."""
    tokens = (input_hw[0] // patch) * (input_hw[1] // patch) + 1
    return CAM_BASE_MB + CAM_MB_PER_TOKEN2 * tokens * tokens


def check_memory(samples, budget_mb: float, max_side: int | None = None, patch: int = 16) -> None:
    """Images whose CAMs would need more than ``budget_mb``, named in one error with the
    fix, before any model is loaded."""
    need = [(memory_estimate_mb(input_size(s.orig_hw, patch, max_side), patch), s)
            for s in samples]
    over = sorted((n for n in need if n[0] > budget_mb), key=lambda n: -n[0])
    if over:
        listed = ", ".join(f"{s.id} ({s.orig_hw[1]}x{s.orig_hw[0]}, ~{mb / 1024:.1f} GB)"
                           for mb, s in over[:5])
        raise DatasetError(
            f"{len(over)} image(s) need more memory for their CAMs than the "
            f"{budget_mb / 1024:.1f} GB the CAM stage has ({listed}"
            f"{' ...' if len(over) > 5 else ''}): set cam.max_side (e.g. 1024: the longest "
            f"side the model sees; CAMs stay at the image size) or raise resources.cams.mem_mb")
