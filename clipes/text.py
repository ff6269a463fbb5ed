"""Text side of CLIP-ES: class lists, prompt names, background sets, templates,
text embeddings and sharpness-based prompt selection.

Every constant of the text stage lives here, once. The reference strings are those of
the authors' code (``linyq2117/CLIP-ES``), quirks included; improvements are named
options of :func:`class_prompt_names` and :func:`encode_prompts`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from .errors import DatasetError

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch


def _no_grad(fn):
    """torch.no_grad() as a decorator, with torch imported only when called (the dataset
    and evaluation stages use this module without torch)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper

# The template chosen by the authors with sharpness-based prompt selection.
REFERENCE_TEMPLATE = "a clean origami {}."

VOC12_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# COCO14 in the 80-class order of the reference (VOC spellings for the shared classes).
COCO14_CLASSES = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "sofa", "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

# Prompt names that differ from the class names: synonyms fused into one sentence.
_SHARED_SYNONYMS = {
    "bird": "bird avian",
    "chair": "chair seat",
    "person": "person with clothes,people,human",
    "tvmonitor": "tvmonitor screen",
}
VOC12_PROMPT_NAMES = dict(_SHARED_SYNONYMS)
COCO14_PROMPT_NAMES = {
    **_SHARED_SYNONYMS,
    "backpack": "backpack,bag",
    "umbrella": "umbrella,parasol",
    "handbag": "handbag,purse",
    "tie": "necktie",
    "baseball glove": "glove",
    "spoon": "dessertspoon",
    "remote": "remote control",
    "hair drier": "hairdrier,blowdrier",
}
# The reference code misspells this prompt; kept only in reference mode.
COCO14_REFERENCE_TYPOS = {"snowboard": "sknowboard"}

VOC12_BACKGROUND = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river",
    "sea", "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain",
    "ocean", "road", "rock", "street", "valley", "bridge", "sign",
)
COCO14_BACKGROUND = tuple(w for w in VOC12_BACKGROUND if w not in ("keyboard", "sign"))

# CLIP's 80 ImageNet templates: the natural candidate pool for prompt selection.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.",
    "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
    "a clean origami {}.",
)


@dataclass(frozen=True)
class ClassSpec:
    """One foreground class: its name and the synonyms that describe it in text.

    ``synonyms[0]`` is the primary wording; the reference fuses all of them into one
    sentence joined by commas (``"person with clothes,people,human"``).
    """

    name: str
    synonyms: tuple[str, ...]

    @property
    def prompt_name(self) -> str:
        return ",".join(self.synonyms)


def dataset_classes(dataset: str, reference: bool = True) -> list[ClassSpec]:
    """Class specs of a benchmark dataset (``voc12`` or ``coco14``) in reference order.

    ``reference=False`` drops the reference's spelling mistakes ("sknowboard").
    """
    if dataset == "voc12":
        names, prompts = VOC12_CLASSES, VOC12_PROMPT_NAMES
    elif dataset == "coco14":
        names, prompts = COCO14_CLASSES, dict(COCO14_PROMPT_NAMES)
        if reference:
            prompts.update(COCO14_REFERENCE_TYPOS)
    else:
        raise ValueError(f"unknown benchmark dataset {dataset!r}: expected 'voc12' or 'coco14'")
    return [ClassSpec(n, tuple(prompts.get(n, n).split(","))) for n in names]


def background_names(dataset: str) -> tuple[str, ...]:
    """The class-related background set of a benchmark (25 words for VOC, 23 for COCO)."""
    if dataset == "voc12":
        return VOC12_BACKGROUND
    if dataset == "coco14":
        return COCO14_BACKGROUND
    raise ValueError(f"unknown benchmark dataset {dataset!r}: expected 'voc12' or 'coco14'")


def class_specs_from_config(entries: Iterable[str | dict]) -> list[ClassSpec]:
    """Class specs from a user's config: each entry a name, or ``{name, synonyms}``."""
    specs = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            specs.append(ClassSpec(entry, (entry,)))
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            syn = entry.get("synonyms") or []
            if isinstance(syn, str):
                syn = [syn]
            words = [entry["name"]] + [s for s in syn if s != entry["name"]]
            specs.append(ClassSpec(entry["name"], tuple(words)))
        else:
            raise DatasetError(
                f"classes[{i}] must be a class name or a mapping with 'name' "
                f"(and optional 'synonyms'), got {entry!r}")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"duplicate class names in the class list: {dup}")
    check_class_names(specs)
    return specs


# label values: 0 background, 1..254 the classes, 255 ignored; masks are 8-bit PNGs
MAX_CLASSES = 254


def tokenizer_form(text: str) -> str:
    """A name as CLIP's tokenizer sees it: HTML entities resolved, Unicode composed,
    white space collapsed, lower case (open_clip's basic_clean, whitespace_clean, lower)."""
    import html
    import re
    import unicodedata

    t = html.unescape(html.unescape(unicodedata.normalize("NFC", text)))
    return re.sub(r"\s+", " ", t).strip().lower()


def check_class_names(specs: Sequence[ClassSpec]) -> None:
    """Refuse class lists the method cannot represent: more than MAX_CLASSES classes (the
    masks are 8-bit with 255 ignored), an empty name, or two names CLIP's tokenizer cannot
    tell apart (an image labelled with both would lose its object)."""
    if len(specs) > MAX_CLASSES:
        raise DatasetError(f"the class list has {len(specs)} classes: at most {MAX_CLASSES} fit "
                           f"the 8-bit masks (0 background, 255 ignored); merge classes or "
                           f"split the dataset")
    seen: dict[str, str] = {}
    for s in specs:
        form = tokenizer_form(s.name)
        if not form:
            raise DatasetError(f"class name {s.name!r} is empty once white space is removed")
        if form in seen:
            raise DatasetError(f"class names {seen[form]!r} and {s.name!r} are the same to CLIP's "
                               f"tokenizer (it lower-cases and collapses spaces): merge them into "
                               f"one class or rename one")
        seen[form] = s.name


def split_background(specs: Sequence[ClassSpec], background: Sequence[str]
                     ) -> tuple[tuple[str, ...], list[str]]:
    """(background words to use, words left out): a word that names a class (its name or a
    synonym, as the tokenizer sees it) would suppress that class through its own background
    prompt, so it is taken out of the background set of the dataset."""
    names = {tokenizer_form(w) for s in specs for w in (s.name, *s.synonyms)}
    kept = tuple(w for w in background if tokenizer_form(w) not in names)
    return kept, [w for w in background if tokenizer_form(w) in names]


def prompt_sentences(words: Sequence[str], template: str) -> list[str]:
    """Fill ``template`` with each word: ``"a clean origami {}."`` -> ``"a clean origami cat."``."""
    if "{}" not in template:
        raise DatasetError(f"template {template!r} has no '{{}}' placeholder for the class name")
    return [template.format(w) for w in words]


@_no_grad
def encode_prompts(
    model,
    tokenizer: Callable,
    specs_or_words: Sequence[ClassSpec | str],
    template: str = REFERENCE_TEMPLATE,
    synonym_fusion: str = "sentence",
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    context: str = "full",
) -> torch.Tensor:
    """L2-normalised text embeddings, one row per class: ``(N, D)`` float32.

    ``synonym_fusion``:
      - ``"sentence"`` (reference): all synonyms in one sentence, one embedding;
      - ``"average"``: one sentence per synonym, normalised embeddings averaged and
        normalised again.
    ``context``: ``"full"`` (reference) runs the text tower over its whole context (77
    tokens); ``"trimmed"`` stops after the longest prompt's end token (:func:`encode_trimmed`).
    """
    if context not in CONTEXTS:
        raise DatasetError(f"text context {context!r}: one of {CONTEXTS}")
    if synonym_fusion not in ("sentence", "average"):
        raise ValueError(f"synonym_fusion must be 'sentence' or 'average', got {synonym_fusion!r}")
    groups: list[list[str]] = []
    for s in specs_or_words:
        if isinstance(s, str):
            groups.append([s])
        elif synonym_fusion == "sentence":
            groups.append([s.prompt_name])
        else:
            groups.append(list(s.synonyms))
    import torch

    flat = [w for g in groups for w in g]
    sentences = prompt_sentences(flat, template)
    feats = []
    for i in range(0, len(sentences), batch_size):
        tokens = tokenizer(sentences[i:i + batch_size]).to(device)
        f = (encode_trimmed(model, tokens) if context == "trimmed"
             else model.encode_text(tokens)).float()  # (n, D)
        feats.append(f / f.norm(dim=-1, keepdim=True))
    flat_feats = torch.cat(feats)
    out, i = [], 0
    for g in groups:
        f = flat_feats[i:i + len(g)].mean(0)
        out.append(f / f.norm())
        i += len(g)
    return torch.stack(out)  # (N, D)


CONTEXTS = ("full", "trimmed")


def encode_trimmed(model, tokens):
    """open_clip's ``encode_text`` on the first L positions only, L = the longest prompt's
    length (tokens after its end token are padding). The text tower's causal mask makes
    positions before L independent of those after, so the features are the full context's
    up to float rounding (the matrix products change shape): about 1e-7 on unit vectors,
    for a sixth of the work. Towers without a causal mask are encoded in full."""
    mask = getattr(model, "attn_mask", None)
    if mask is None or not hasattr(model, "positional_embedding"):
        return model.encode_text(tokens)
    eot = tokens.argmax(dim=-1)  # the end token has the largest id of the BPE vocabulary
    n = int(max(int((tokens != 0).sum(dim=1).max()), int(eot.max()) + 1))
    t = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=mask[:n, :n])
    x = model.ln_final(x)
    x = _pool_text(x, t, model.text_pool_type, getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is not None:  # as open_clip's encode_text: a Linear layer or a matrix
        import torch

        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def _pool_text(x, tokens, pool_type: str, eos_id):
    """open_clip's pooling of text tokens (B, L, C) -> (B, C): the highest id's position
    ("argmax", OpenAI's end token), the given end id's ("eos"), the first, the last."""
    import torch

    rows = torch.arange(x.shape[0], device=x.device)
    if pool_type == "argmax":
        return x[rows, tokens.argmax(dim=-1)]
    if pool_type == "eos":
        return x[rows, (tokens == eos_id).int().argmax(dim=-1)]
    if pool_type == "first":
        return x[:, 0]
    if pool_type == "last":
        return x[:, -1]
    return x


def sharpness(scores_per_image: Iterable[np.ndarray]) -> float:
    """Sharpness of a template: sum over images of var/mean of the softmax scores of the
    image's ground-truth classes (docs/method.md, prompt selection). Single-label images add 0."""
    total = 0.0
    for s in scores_per_image:
        s = np.asarray(s, dtype=np.float64)
        if s.size < 2:
            continue
        m = s.mean()
        if m > 0:
            total += s.var() / m
    return float(total)


@_no_grad
def score_templates(
    model,
    tokenizer: Callable,
    specs: Sequence[ClassSpec],
    templates: Sequence[str],
    image_features: torch.Tensor,
    labels: Sequence[Sequence[int]],
    synonym_fusion: str = "sentence",
    device: str | torch.device = "cpu",
):
    """Rank ``templates`` by sharpness on a labelled image set (zero-shot, plain CLIP).

    image_features: (B, D) CLIP image embeddings (CLS pooling, as plain CLIP classifies);
    labels[b]: the ground-truth class indices of image b.
    Returns a pandas DataFrame sorted by sharpness (least sharp first, ``selected`` marks
    the chosen template) with the number of multi-label images that scored.
    """
    import pandas as pd

    img = image_features.float().to(device)
    img = img / img.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp().float()
    rows = []
    for t in templates:
        txt = encode_prompts(model, tokenizer, specs, t, synonym_fusion, device)
        probs = (scale * img @ txt.T).softmax(dim=-1).cpu().numpy()  # (B, N)
        per_image = [probs[b, list(lab)] for b, lab in enumerate(labels) if len(lab) > 0]
        rows.append({
            "template": t,
            "sharpness": sharpness(per_image),
            "n_multilabel": sum(1 for p in per_image if p.size > 1),
        })
    table = pd.DataFrame(rows).sort_values("sharpness", kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    table["selected"] = table["rank"] == 1
    return table


def dataset_text_features(clip, classes: Sequence[ClassSpec], background: Sequence[str],
                          template: str = REFERENCE_TEMPLATE, synonym_fusion: str = "sentence",
                          device="cpu", context: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground (N_fg, D) and background (N_bg, D) embeddings with one template."""
    fg = encode_prompts(clip.model, clip.tokenizer, classes, template, synonym_fusion, device,
                        context=context)
    bg = encode_prompts(clip.model, clip.tokenizer, list(background), template, "sentence",
                        device, context=context)
    return fg, bg


def selected_template(table_path) -> str:
    """The selected template of a prompt-selection table (TSV written by score_prompts)."""
    import pandas as pd

    table = pd.read_csv(table_path, sep="\t")
    sel = table[table["selected"].astype(bool)]
    if len(sel) != 1:
        raise DatasetError(f"{table_path}: expected exactly one selected template, found {len(sel)}")
    return str(sel["template"].iloc[0])
