"""VOC2012 test: predictions of the test archive's images packed in the evaluation server's
layout, from a stand-in laid out as VOC2012test.tar unpacks."""

import io
import tarfile
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from clipes import standins, voctest
from clipes.errors import DatasetError
from conftest import run_script


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    from clipes import segmentation as seg

    tmp = tmp_path_factory.mktemp("voctest")
    ids = standins.write_voc_test(tmp, n=5)
    cfg = seg.TrainConfig(n_classes=21, backbone="tiny", init="none", protocol="torchvision")
    model, used = seg.build_model(cfg, lambda m: None)
    torch.save({"model": model.state_dict(), "config": asdict(cfg), "init": used},
               tmp / "model.pt")
    root = tmp / "VOC2012test" / "VOCdevkit" / "VOC2012"
    return tmp, root, ids


def test_the_test_images_are_predicted_and_packed_for_the_server(test_set):
    tmp, root, ids = test_set
    split = root / "ImageSets" / "Segmentation" / "test.txt"
    run_script("predict_seg", "--dataset", "voc12", "--root", root, "--split", split,
               "--images-only", "--model", tmp / "model.pt", "--out", tmp / "pred",
               "--device", "cpu", "--test-protocol", "mean-softmax-flip", "--scales", "1.0")
    for n in (1, 2):
        run_script("voc_test_submission", "--pred", tmp / "pred", "--split", split,
                   "--out", tmp / f"sub{n}.tar.gz")
    data = (tmp / "sub1.tar.gz").read_bytes()
    assert data == (tmp / "sub2.tar.gz").read_bytes()  # the same bytes for the same masks
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        assert all(m.mtime == 0 for m in tar.getmembers())
    want = {f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in ids}
    assert set(files) == want
    for name, png in files.items():
        im = Image.open(io.BytesIO(png))
        iid = name.rsplit("/", 1)[1][:-4]
        assert im.mode == "P" and im.size == Image.open(root / "JPEGImages" / f"{iid}.jpg").size
        assert im.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # VOC's colour map
        assert np.asarray(im).max() <= 20


def test_missing_or_bad_predictions_are_refused(test_set, tmp_path):
    tmp, root, ids = test_set
    split = root / "ImageSets" / "Segmentation" / "test.txt"
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in ids[:-1]:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(pred / f"{i}.png")
    with pytest.raises(DatasetError, match=f"no prediction for {ids[-1]}"):
        voctest.write_submission(pred, split, tmp_path / "s.tar.gz")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(pred / f"{ids[-1]}.png")
    with pytest.raises(DatasetError, match=r"label values \[255\] beyond the 21 VOC classes"):
        voctest.write_submission(pred, split, tmp_path / "s.tar.gz")
    assert not (tmp_path / "s.tar.gz").exists()
    (split.parent / "bad.txt").write_text(f"{ids[0]}\n2008_missing\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: id '2008_missing' has no image"):
        voctest.test_samples(root, split.parent / "bad.txt")
