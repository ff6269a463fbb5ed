"""The demo shows what each stage of the method does: checked on a cheap subset of it
(96 of its 400 training images) with the tiny CLIP the repository ships, so that a change
that breaks a stage's gain is caught without running the whole demo. (CGL's gain needs
the segmentation networks, minutes each: the README's demo table reports it.)"""

import json

import pytest
import yaml

from conftest import REPO
from workflow_helpers import smk


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo_subset")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["dataset"]["synthetic"].update(n_train=96, n_val=4)
    cfg["model"]["checkpoint"] = str(REPO / "config" / "demo" / "clip.npz")
    cfg["text"]["select_prompt"]["enabled"] = False
    cfg["segmentation"]["enabled"] = False
    cfg["variants"] = {"base": {}, "no_caa": {"cam": {"caa": False}}}
    targets = [f"results/demo/{v}/eval/{n}.json" for v in ("base", "no_caa")
               for n in ("cams_plain", "cams", "pseudo_masks")]
    smk(work, cfg, *targets, timeout=900)

    def miou(variant, name):
        d = json.loads((work / "results" / "demo" / variant / "eval" / f"{name}.json").read_text())
        return 100 * (d["at_chosen"]["mIoU"] if "at_chosen" in d else d["mIoU"])

    from clipes import datasets, report, synthetic

    data = work / "results" / "demo" / "data" / "synthetic"
    ds = datasets.load("synthetic", data, data / "train.txt", classes=list(synthetic.CLASSES),
                       labels_csv=data / "labels.csv")
    return miou, report.trivial_baselines(ds.samples, ds.n_classes)


def test_initial_cam_is_well_above_the_trivial_baselines(subset):
    miou, baselines = subset
    best_trivial = 100 * max(baselines.values())
    assert miou("base", "cams_plain") > best_trivial + 15, (miou("base", "cams_plain"), baselines)


def test_caa_improves_the_initial_cam(subset):
    """The demo CLIP's attention groups patches of similar appearance (its grouping loss),
    so CAA completes the objects the initial CAM finds in part."""
    miou, _ = subset
    assert miou("base", "cams") > miou("base", "cams_plain") + 1, (
        miou("base", "cams"), miou("base", "cams_plain"))


def test_crf_improves_the_maps_it_is_given(subset):
    miou, _ = subset
    assert miou("base", "pseudo_masks") > miou("base", "cams") + 3  # CRF on the CAA maps
    assert miou("no_caa", "pseudo_masks") > miou("no_caa", "cams") + 3  # CRF on the plain maps
