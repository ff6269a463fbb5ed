"""OpenAI-format CLIPs built without open_clip (clipes.openai_clip, clipes.tokenizer):
the same weights, tokens and outputs as open_clip's own loader, and no open_clip import."""

import subprocess
import sys

import pytest
import torch

from clipes import model, openai_clip, text
from clipes.tokenizer import Tokenizer, openai_tokenizer


def _open_clip_model(path):
    """open_clip's model of the file, frozen as load_clip froze it before (frozen or not
    changes which attention kernel torch picks, so the comparison needs both frozen)."""
    import open_clip

    return model._freeze(open_clip.load_openai_model(str(path), precision="fp32", device="cpu"))


@pytest.fixture(scope="module")
def pair(golden):
    """(clipes' model, open_clip's model) of the golden set's tiny OpenAI-format CLIP."""
    return model.load_clip(checkpoint=golden / "clip_tiny.pt").model, _open_clip_model(golden / "clip_tiny.pt")


def test_the_native_model_is_open_clips_module_for_module(pair):
    ours, theirs = pair
    assert type(ours).__module__ == "clipes.openai_clip"
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)  # the same names in the same order
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert torch.equal(ours.attn_mask, theirs.attn_mask)
    assert ours.context_length == theirs.context_length
    assert ours.visual.grid_size == tuple(theirs.visual.grid_size)
    assert ours.visual.image_size == tuple(theirs.visual.image_size)
    assert tuple(ours.visual.image_mean) == tuple(theirs.visual.image_mean)


def test_text_and_image_features_are_the_same_bits(pair):
    ours, theirs = pair
    tok = openai_tokenizer()
    sentences = text.prompt_sentences(["aeroplane", "person with clothes,people,human", "sky"],
                                      "a clean origami {}.")
    tokens = tok(sentences, context_length=ours.context_length)
    g = torch.Generator().manual_seed(0)
    side = ours.visual.image_size[0]
    images = torch.randn(2, 3, side, side, generator=g)
    with torch.no_grad():
        assert torch.equal(ours.encode_text(tokens), theirs.encode_text(tokens))
        assert torch.equal(text.encode_trimmed(ours, tokens), text.encode_trimmed(theirs, tokens))
        assert torch.equal(ours.encode_image(images), theirs.encode_image(images))
    # the CAM path: the vision tower at a non-square size, attention kept
    x = torch.randn(1, 3, 3 * 16, 5 * 16, generator=g)
    outs = []
    for net in (ours, theirs):
        tower = model.VisionTower(model.Clip(net, tok, "t"))
        tokens_in = tower.embed(x)
        h, attn = tower.trunk(tokens_in, keep_attn_from=0)
        out, w = tower.last_block(h, tower.last_block_input_norm(h))
        outs.append((tokens_in, h, *attn, out, w, tower.pool_patches(out)))
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_fp32_files_are_rounded_where_open_clip_rounds_them(golden, tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {k: v.float() + 1e-4 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
          for k, v in torch.load(golden / "clip_tiny.pt").items()}
    torch.save(sd, path := tmp_path / "fp32.pt")
    ours = model.load_clip(checkpoint=path).model.state_dict()
    theirs = _open_clip_model(path).state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    half = openai_clip.fp16_keys(sd)
    assert "visual.conv1.weight" in half and "visual.transformer.resblocks.0.attn.in_proj_bias" in half
    assert "visual.ln_pre.weight" not in half and "token_embedding.weight" not in half
    assert any(not torch.equal(ours[k], sd[k]) for k in half)  # rounded ...
    assert torch.equal(ours["visual.positional_embedding"], sd["visual.positional_embedding"])  # ... or not


def test_a_torchscript_archive_loads_natively_to_the_same_weights(golden, tmp_path):
    # OpenAI's own releases are TorchScript archives; their weights are all the loader needs
    net = model.load_clip(checkpoint=golden / "clip_tiny.pt").model
    side = net.visual.image_size[0]
    traced = torch.jit.trace_module(net, {"encode_image": torch.zeros(1, 3, side, side)})
    traced.save(str(path := tmp_path / "jit.pt"))
    loaded = model.load_clip(checkpoint=path)
    assert type(loaded.model).__module__ == "clipes.openai_clip"
    a, b = loaded.model.state_dict(), net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loading_a_checkpoint_imports_neither_open_clip_nor_torchvision(golden):
    code = ("import sys; from clipes import model, text; "
            f"c = model.load_clip(checkpoint={str(golden / 'clip_tiny.pt')!r}); "
            "c.tokenizer(['a photo of a cat.']); "
            "print(sorted(m for m in ('open_clip', 'torchvision', 'timm', 'torch._dynamo') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


TEXTS = [
    "a clean origami aeroplane.", "a clean origami person with clothes,people,human.",
    "Tv Monitor &amp;amp; SCREEN", "  naïve   café\tcrème ", "ÀÉÎ 1234 x2 3.14", "don't we'll I'd",
    "<start_of_text>inside<end_of_text>", "", "😀 emoji 中文 ελληνικά", "hairdrier,blowdrier",
    "mojibake: cafÃ©", "a " * 100,
]


def test_tokens_equal_open_clips_tokenizer():
    import open_clip

    theirs = open_clip.get_tokenizer("ViT-B-16")
    ours = Tokenizer()
    words = [w for d in ("voc12", "coco14") for s in text.dataset_classes(d)
             for w in (s.name, s.prompt_name, *s.synonyms)]
    words += [w for d in ("voc12", "coco14") for w in text.background_names(d)]
    texts = TEXTS + [t.format(w) for t in text.IMAGENET_TEMPLATES for w in words[::7]]
    for n in (77, 32, 5):
        assert torch.equal(ours(texts, context_length=n), theirs(texts, context_length=n)), n
    assert torch.equal(ours("one string"), theirs("one string"))
    long = ours(["a " * 100])[0]
    assert long[-1] == ours.eot and long[0] == ours.sot  # cut, and still ended
