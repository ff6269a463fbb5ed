"""Argument groups and error handling shared by the stage scripts in ``scripts/``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import datasets


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help of every script: the description's examples printed as written, and each
    option's default after its help (where it has one worth showing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or action.required or default in (None, argparse.SUPPRESS)
                or default is False or default == []):
            return text
        return f"{text} (default: %(default)s)"


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", required=True, choices=["voc12", "coco14", "custom", "synthetic"],
                   help="dataset kind (custom/synthetic: a folder of images, a class list, a CSV)")
    g.add_argument("--root", required=True, type=Path, help="dataset root folder")
    g.add_argument("--split", type=Path,
                   help="split file: one id per line (COCO: '<id> <label> ...'); required for "
                        "voc12/coco14, optional for custom (default: every row of --labels)")
    g.add_argument("--classes",
                   help="custom: class list (YAML list of names or {name, synonyms}, or a text "
                        "file 'name: synonym, synonym' per line), or the list itself as JSON")
    g.add_argument("--labels", type=Path, help="custom: CSV with columns image,labels (';'-separated)")
    g.add_argument("--tags", type=Path,
                   help="predicted labels (the label file of scripts/tag_images.py) in place of "
                        "the dataset's own; a custom dataset then needs no --labels")
    g.add_argument("--background",
                   help="custom: background words, one per line, or a JSON list (default: the "
                        "VOC12 set)")
    g.add_argument("--no-reference-quirks", action="store_true",
                   help="fix the reference's quirks in class prompts and labels "
                        "(COCO 'sknowboard', repeated COCO labels)")
    g.add_argument("--exif", choices=datasets.EXIF_POLICIES, default="ignore",
                   help="EXIF orientation: ignore (reference: pixels as stored) or apply "
                        "(turned as image viewers show them)")


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 0 <= I < N; a bad spec is a one-line error."""
    idx, _, count = spec.partition("/")
    try:
        i, n = int(idx), int(count or 1)
    except ValueError:
        raise datasets.DatasetError(f"--shard {spec!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise datasets.DatasetError(f"--shard {spec!r}: needs N >= 1 and 0 <= I < N (I/N: every "
                                    f"N-th image from the I-th, counting from 0)")
    return i, n


def json_or_file(value, what: str):
    """A file path (returned as a Path) or a JSON list given inline (returned parsed)."""
    if value is None or isinstance(value, list):
        return value
    if not str(value).lstrip().startswith("["):
        try:
            if Path(value).is_file():
                return Path(value)
        except OSError:  # too long for a file name: a list given inline without '['
            pass
    if str(value).lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise datasets.DatasetError(f"{what}: {value!r} is not a valid JSON list: {e}") from None
    raise datasets.DatasetError(f"{what}: file not found: {value}")


def read_text_file(path: Path, what: str) -> str:
    """A user's text file as UTF-8 (a BOM dropped); other encodings are a one-line error."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise datasets.DatasetError(f"{path}: {what} is not UTF-8 text (byte {e.start}); save it "
                                    f"as UTF-8") from None


def read_class_list(path: Path) -> list:
    """Class entries from YAML/JSON (a list) or text ('name: syn, syn' per line)."""
    if not path.is_file():
        raise datasets.DatasetError(f"class list not found: {path}")
    text = read_text_file(path, "the class list")
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = yaml.safe_load(text)  # plain data only: tags that build objects are refused
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise datasets.DatasetError(f"{path}: not a plain YAML/JSON list of classes ({first}); "
                                        f"write names, or {{name, synonyms}} entries") from None
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if not isinstance(data, list):
            raise datasets.DatasetError(f"{path}: expected a list of classes")
        return data
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, syn = line.partition(":")
        words = [w.strip() for w in syn.split(",") if w.strip()]
        out.append({"name": name.strip(), "synonyms": words} if words else name.strip())
    return out


def dataset_from_args(args, need_gt: bool = False, labels_optional: bool = False) -> datasets.Dataset:
    """The dataset the arguments name; with --tags, its labels are the predicted ones.
    labels_optional: a custom dataset may come without a label table (every image of its
    folder, unlabelled: what the tagging stage reads)."""
    tags = getattr(args, "tags", None)
    ds = _dataset(args, need_gt, labels_optional or tags is not None)
    if tags is not None:
        ds = datasets.with_tags(ds, datasets.read_tags(tags), tags)
    return ds


def _dataset(args, need_gt: bool, labels_optional: bool) -> datasets.Dataset:
    reference = not args.no_reference_quirks
    datasets.set_exif_policy(getattr(args, "exif", "ignore"))
    if args.dataset in ("custom", "synthetic"):
        if args.classes is None or (args.labels is None and not labels_optional):
            raise datasets.DatasetError("--dataset custom needs --classes and --labels (or "
                                        "--tags: predicted labels)")
        bg = None
        if args.background is not None:
            bg = json_or_file(args.background, "--background")
            if isinstance(bg, Path):
                bg = [w.strip() for w in read_text_file(bg, "the background list").splitlines()
                      if w.strip()]
        classes = json_or_file(args.classes, "--classes")
        if isinstance(classes, Path):
            classes = read_class_list(classes)
        if args.labels is None:
            ds = datasets.load_images(args.root, classes, split=args.split, background=bg)
        else:
            ds = datasets.load_custom(args.root, classes, args.labels,
                                      split=args.split, background=bg)
        ds.name = args.dataset
        return ds
    if args.split is None:
        raise datasets.DatasetError(f"--dataset {args.dataset} needs --split FILE")
    return datasets.load(args.dataset, args.root, args.split, need_gt=need_gt,
                         reference=reference)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=Path,
                   help="OpenAI-format CLIP checkpoint (state dict or TorchScript); overrides --model")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag (default openai); 'none': random weights")
    g.add_argument("--model-seed", type=int, default=0,
                   help="seed of the random weights with --pretrained none (default 0)")
    g.add_argument("--cache-dir", help="where open_clip keeps downloaded weights")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def resolve_device(name: str) -> str:
    """cpu / cuda / cuda:N; 'auto' and 'cuda' first take a free GPU slot of the machine
    (:mod:`clipes.gpuslots`), so parallel jobs on one node each get their own device."""
    import torch

    if name in ("auto", "cuda"):
        from . import gpuslots

        gpuslots.acquire()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise datasets.DatasetError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return name


def load_model(args):
    from .model import load_clip

    return load_clip(args.model, args.pretrained, args.checkpoint,
                     device=resolve_device(args.device), cache_dir=args.cache_dir,
                     seed=args.model_seed)


def write_skips(path: Path | None, skipped: list[dict]) -> None:
    if path is not None:
        from .io import write_json

        write_json(path, {"skipped": skipped, "count": len(skipped)})
    for s in skipped:
        print(f"skipped {s['id']}: {s['reason']}", file=sys.stderr)


def run(main, fast_exit: bool = False) -> None:
    """Run a script's main; known input errors end with one clear line and exit code 2
    (``--debug`` anywhere on the command line: with the traceback). ``fast_exit``: after a
    successful main, end the process without the interpreter's teardown (freeing torch's
    and open_clip's modules object by object takes about a second per process); every
    output is written and closed by then, and the standard streams are flushed first."""
    from .errors import ClipLoadError

    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    t0 = time.time()
    try:
        main()
    except (datasets.DatasetError, ClipLoadError, FileNotFoundError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        import errno

        if debug or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        fix = {errno.ENOSPC: "free space there or point the outputs elsewhere",
               errno.EDQUOT: "free space in your quota or point the outputs elsewhere",
               errno.EROFS: "point the outputs to a writable folder",
               errno.EACCES: "check the folder's permissions"}[e.errno]
        print(f"error: {e.strerror}{where}: {fix}", file=sys.stderr)
        sys.exit(2)
    print(f"done in {time.time() - t0:.1f} s", file=sys.stderr)
    if fast_exit:
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
