import numpy as np
import pytest

from clipes import text


def test_reference_prompt_strings():
    voc = text.dataset_classes("voc12")
    assert len(voc) == 20 and len(text.VOC12_BACKGROUND) == 25
    names = {s.name: s.prompt_name for s in voc}
    assert names["person"] == "person with clothes,people,human"
    assert names["bird"] == "bird avian" and names["cat"] == "cat"
    assert text.prompt_sentences([names["chair"]], text.REFERENCE_TEMPLATE) == \
        ["a clean origami chair seat."]
    coco = {s.name: s.prompt_name for s in text.dataset_classes("coco14")}
    assert len(coco) == 80 and len(text.COCO14_BACKGROUND) == 23
    assert coco["snowboard"] == "sknowboard"  # reference typo, reference mode only
    fixed = {s.name: s.prompt_name for s in text.dataset_classes("coco14", reference=False)}
    assert fixed["snowboard"] == "snowboard" and fixed["tie"] == "necktie"
    assert "keyboard" not in text.COCO14_BACKGROUND and "sign" not in text.COCO14_BACKGROUND


def test_template_needs_placeholder():
    with pytest.raises(ValueError, match="placeholder"):
        text.prompt_sentences(["cat"], "a photo")


def test_class_specs_from_config():
    specs = text.class_specs_from_config(["cat", {"name": "person", "synonyms": ["people", "human"]}])
    assert specs[1].prompt_name == "person,people,human"
    with pytest.raises(ValueError, match="duplicate"):
        text.class_specs_from_config(["cat", "cat"])
    with pytest.raises(ValueError, match="classes\\[0\\]"):
        text.class_specs_from_config([3])


def test_sharpness_is_dispersion_of_gt_scores():
    flat = [np.array([0.3, 0.3]), np.array([0.9])]
    sharp = [np.array([0.58, 0.02])]
    assert text.sharpness(flat) == 0.0
    assert text.sharpness(sharp) == pytest.approx(np.var([0.58, 0.02]) / 0.3)


def test_encode_prompts_fusion_modes(tiny_clip):
    spec = text.class_specs_from_config([{"name": "person", "synonyms": ["people"]}])
    s = text.encode_prompts(tiny_clip.model, tiny_clip.tokenizer, spec, synonym_fusion="sentence")
    a = text.encode_prompts(tiny_clip.model, tiny_clip.tokenizer, spec, synonym_fusion="average")
    single = text.encode_prompts(tiny_clip.model, tiny_clip.tokenizer, ["person", "people"])
    want = single.mean(0) / single.mean(0).norm()
    assert np.allclose(a[0].numpy(), want.numpy(), atol=1e-6)
    assert not np.allclose(s.numpy(), a.numpy(), atol=1e-3)
    assert np.allclose(s.norm(dim=-1).numpy(), 1, atol=1e-6)


def test_score_templates_ranks_and_selects(tiny_clip):
    import torch

    torch.manual_seed(0)
    specs = text.dataset_classes("voc12")
    feats = torch.randn(6, 64)
    labels = [[0, 1], [2], [3, 4, 5], [], [6, 7], [14, 11]]
    templates = ["a photo of a {}.", text.REFERENCE_TEMPLATE, "art of the {}."]
    table = text.score_templates(tiny_clip.model, tiny_clip.tokenizer, specs, templates, feats, labels)
    assert list(table.columns) == ["template", "sharpness", "n_multilabel", "rank", "selected"]
    assert sorted(table["template"]) == sorted(templates)
    assert table["sharpness"].is_monotonic_increasing
    assert table["selected"].sum() == 1 and table.loc[0, "selected"]
    assert (table["n_multilabel"] == 4).all()


def test_trimmed_context_gives_the_full_contexts_features(tiny_clip):
    specs = text.dataset_classes("voc12")
    full = text.dataset_text_features(tiny_clip, specs, text.VOC12_BACKGROUND, context="full")
    trim = text.dataset_text_features(tiny_clip, specs, text.VOC12_BACKGROUND, context="trimmed")
    for a, b in zip(full, trim):
        assert a.shape == b.shape and float((a - b).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="text context"):
        text.dataset_text_features(tiny_clip, specs, text.VOC12_BACKGROUND, context="half")
