import numpy as np

from clipes import crf


def test_background_score_and_ties_go_to_background():
    cams = np.array([[[0.5, 0.2]], [[0.1, 0.8]]], np.float16)  # K=2, 1x2 image
    bg = crf.background_score(cams, 1)
    assert bg.dtype == np.float16
    np.testing.assert_allclose(bg[0, 0], [0.5, 0.2], atol=1e-3)
    labels = crf.cam_labels(np.array([3, 7]), cams, 1)
    np.testing.assert_array_equal(labels, [[0, 8]])  # tie at pixel 0: background wins


def test_reference_crf_image_wraps_negative_values(tmp_path):
    from PIL import Image

    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (200, 120, 100)  # R, G, B
    Image.fromarray(rgb).save(tmp_path / "a.png")
    im = crf.crf_image(tmp_path / "a.png")
    # B: 100 - 104.008 = -4.008 -> -4 -> 252; G: 120 - 116.669 -> 3; R: 200 - 122.675 -> 77
    np.testing.assert_array_equal(im[0, 0], [252, 3, 77])
    np.testing.assert_array_equal(im[1, 1], [152, 140, 134])  # -104 -> 152 etc.


def test_confident_cam_survives_crf_and_uncertain_pixels_are_ignored():
    h, w = 24, 24
    image = np.full((h, w, 3), 128, np.uint8)
    cams = np.zeros((1, h, w), np.float16)
    cams[0, 4:20, 4:20] = 1.0
    cams[0, 0, 0] = 0.5  # ambiguous pixel: 0.5 vs 0.5
    labels, mask, conf = crf.crf_pseudo_mask(image, np.array([4]), cams)
    assert labels[12, 12] == 5 and labels[22, 22] == 0
    assert conf[12, 12] >= 0.95 and mask[12, 12] == 5
    assert (mask[conf < 0.95] == 255).all() and (mask == 255).any()


def test_confidence_mask_threshold():
    labels = np.array([[1, 2]], np.uint8)
    conf = np.array([[0.96, 0.5]])
    np.testing.assert_array_equal(crf.confidence_mask(labels, conf, 0.95), [[1, 255]])
