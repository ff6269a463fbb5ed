#!/usr/bin/env python
"""Export CAM archives (either layout of scripts/cams.py) for other tools.

--to authors (default): the authors' format, one OUT/<id>.npy per image holding the dict
    {"keys": int64 (K,), "attn_highres": float16 (K, H, W)}, as their
    generate_cams_*.py scripts write it and their eval_cam*.py / CRF scripts read it.
--to full: this project's full layout (float16 maps at the image size, OUT/<id>.npz).

The maps are the ones every stage of this project reads (clipes.camstore.load_cams):
a grid archive exports to the same bits as a full one of the same run.

Example:
    python scripts/export_cams.py --cams results/voc12/base/cams/shard0 \\
        results/voc12/base/cams/shard1 --out cams_npy
"""

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipes import camstore, cli, io  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--cams", type=Path, nargs="+", required=True,
                   help="folder(s) of <id>.npz CAM archives (the CAM stage's shards)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--to", choices=["authors", "full"], default="authors",
                   help="authors: <id>.npy dicts (keys, attn_highres); full: <id>.npz in the "
                        "full layout (default: %(default)s)")
    p.add_argument("--plain", action="store_true",
                   help="export the Grad-CAM before CAA (archives written with --keep-plain) "
                        "instead of the refined maps")
    p.add_argument("--jobs", type=int, default=1, help="processes (default: %(default)s)")
    return p.parse_args(argv)


def export_one(src: Path, dst_dir: Path, to: str, plain: bool) -> str:
    import numpy as np

    keys, cams = camstore.load_cams(src, "cams_plain" if plain else "cams")
    if to == "authors":
        dst = dst_dir / f"{src.stem}.npy"
        with io.atomic_path(dst, suffix=".npy") as tmp:
            with open(tmp, "wb") as f:  # np.save on a path would append ".npy" to the name
                np.save(f, {"keys": keys, "attn_highres": cams})
    else:
        dst = dst_dir / f"{src.stem}.npz"
        camstore.save_full_cams(dst, keys, cams)
    return dst.name


def main(argv=None):
    args = parse_args(argv)
    files = sorted(f for d in args.cams for f in Path(d).glob("*.npz"))
    if not files:
        raise camstore.DatasetError(f"no <id>.npz CAM archives in {', '.join(map(str, args.cams))}")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(f, args.out, args.to, args.plain) for f in files]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            list(pool.map(export_one, *zip(*jobs), chunksize=16))
    else:
        for j in jobs:
            export_one(*j)
    print(f"{len(files)} archives exported to {args.out} ({args.to})", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, fast_exit=True)
