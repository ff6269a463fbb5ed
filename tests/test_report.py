"""Reports rendered from fixture inputs: the numbers in them are the inputs' numbers."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from clipes import report


def _eval(miou, acc=0.5, n=10, **extra):
    return {"mIoU": miou, "pixel_acc": acc, "class_iou": {"0": 0.9, "1": miou, "2": None},
            "n_images": n, **extra}


@pytest.fixture
def inputs(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for name, s, rss in (("cams0", 10.0, 900), ("cams1", 14.0, 950), ("crf0", 3.5, 200),
                         ("eval_cams", 1.25, 100)):
        (bench / f"{name}.tsv").write_text(header + f"{s}\t0:00:{int(s):02d}\t{rss}\t0\t0\t0\t0\t0\t50\t{s * 1.5}\n")
    evals = {
        "cams_plain": {"by_power": {"1": 0.30, "2": 0.3123}, "chosen_power": 2,
                       "chosen_is_oracle": True, "at_chosen": _eval(0.3123), "n_images": 10},
        "cams": {"by_power": {"1": 0.4567, "2": 0.40}, "chosen_power": 1, "chosen_is_oracle": True,
                 "at_chosen": _eval(0.4567), "n_images": 10},
        "crf_labels": _eval(0.5012),
        "pseudo_masks": _eval(0.5555, coverage=0.9),
        "segmentation": None,  # switched off
        "baselines": {"all background": 0.1111, "centre box, first label": 0.2222},
    }
    ds = {"kind": "voc12", "root": "/data/VOC2012", "class_names": ["background", "cat", "dog"],
          "splits": {"train": {"n_images": 10, "skipped": [{"id": "x", "reason": "no object"}]}}}
    cfg = {"dataset": {"name": "voc12"}, "cam": {"mode": "batched"}}
    return report.RunInputs("base", ds, cfg, evals, [bench]), tmp_path


def test_run_report_numbers(inputs):
    inp, tmp = inputs
    ctx = report.render_run(inp, tmp / "r.html", tmp / "r.md")
    html = (tmp / "r.html").read_text()
    md = (tmp / "r.md").read_text()
    quality = html[html.index('id="quality"'):html.index("</table>", html.index('id="quality"'))]
    for value in ("31.23", "45.67", "50.12", "55.55"):
        assert value in quality and value in md
    assert "oracle" in quality and "p=1: 30.00" in quality
    # the switched-off stage says so in place, and shows no number
    seg_row = re.search(r"<tr><td>segmentation \(val\)</td>(.*?)</tr>", quality, re.S).group(1)
    assert "not available" in seg_row and "0.00" not in seg_row
    assert "| segmentation (val) | not available |" in md
    # timing: shards summed per stage, the total is the sum of the stages
    timing = {r["stage"]: r for r in ctx["timing"]}
    assert timing["CAMs + CAA"]["wall_s"] == pytest.approx(24.0)
    assert timing["CAMs + CAA"]["jobs"] == 2 and timing["CAMs + CAA"]["peak_mem_mb"] == 950
    assert timing["CAMs + CAA"]["images_per_s"] == pytest.approx(10 / 24)
    assert ctx["total_wall"] == pytest.approx(28.75)
    assert "28.8" in html and "| **total** | 28.8 |" in md
    # paper numbers for VOC, with the split named; trivial baselines shown
    assert "75.0" in html and "VOC train (1,464)" in html and "71.1" in md
    assert "11.11" in html and "22.22" in md
    assert html.count("data:image/png;base64,") >= 2  # timing and per-class figures embedded
    assert "r_files/timing.png" in md and (tmp / "r_files" / "timing.png").is_file()
    assert ctx["prov"]["config_hash"] and "cam:" in ctx["prov"]["config_yaml"]
    assert f"CLIP: {ctx['clip']}" in html and f"CLIP: {ctx['clip']}" in md


@pytest.mark.parametrize("model, words", [
    ({}, "ViT-B-16 / openai"),
    ({"pretrained": None, "seed": 3}, "random weights (seed 3)"),
    ({"checkpoint": "weights/ViT-B-16.pt"}, "checkpoint weights/ViT-B-16.pt"),
    ({"pretrain": {"enabled": True, "steps": 500, "seed": 0}}, "tiny CLIP trained by this workflow"),
])
def test_report_names_the_clip_that_ran(model, words):
    # the config dump keeps name: ViT-B-16 / pretrained: openai beside a tiny trained CLIP;
    # the header says which weights the CAM stage loaded
    assert words in report.clip_used({"model": model})


def test_comparison_report_deltas(tmp_path):
    import pandas as pd

    t = pd.DataFrame([{"stage": "CAMs + CAA", "wall_s": 20.0, "cpu_s": 1, "peak_mem_mb": 1,
                       "jobs": 1, "images_per_s": 1}])
    runs = {
        "base": {"evals": {"cams": {"at_chosen": {"mIoU": 0.50}}, "pseudo_masks": {"mIoU": 0.60}},
                 "timing": t},
        "no_crf": {"evals": {"cams": {"at_chosen": {"mIoU": 0.50}}, "pseudo_masks": {"mIoU": 0.52}},
                   "timing": t.assign(wall_s=15.0)},
    }
    df = report.render_comparison("voc12", runs, "base", tmp_path / "c.html", tmp_path / "c.md")
    row = df.set_index("variant").loc["no_crf"]
    assert row["pseudo masks (CRF)"] == pytest.approx(52.0)
    assert row["Δ pseudo masks (CRF)"] == pytest.approx(-8.0)
    assert pd.isna(row["segmentation (val)"])
    html = (tmp_path / "c.html").read_text()
    md = (tmp_path / "c.md").read_text()
    assert "-8.00" in html and "52.00" in md and "15.0" in md
    assert "data:image/png;base64," in html


def test_a_variant_without_caa_shows_no_caa_number(inputs, tmp_path):
    """With cam.caa false the CAA stage's evaluation exists (the initial CAM scored
    again): the reports say the stage is off instead of showing that number as CAA's."""
    import pandas as pd

    inp, out = inputs
    assert report.stage_evals(inp.evals, {"cam": {}}) == inp.evals
    assert report.stage_evals(inp.evals, {"cam": {"caa": True}}) == inp.evals
    inp.config["cam"]["caa"] = False
    inp.evals = report.stage_evals(inp.evals, inp.config)
    assert "cams" not in inp.evals and "cams_plain" in inp.evals
    report.render_run(inp, out / "r.html", out / "r.md")
    md = (out / "r.md").read_text()
    assert "| CAA | not available |" in md and "45.67" not in md and "31.23" in md
    t = pd.DataFrame([{"stage": "CAMs + CAA", "wall_s": 2.0, "cpu_s": 1, "peak_mem_mb": 1,
                       "jobs": 1, "images_per_s": 1}])
    runs = {"base": {"evals": {"cams_plain": {"mIoU": 0.5}, "cams": {"mIoU": 0.6}}, "timing": t},
            "no_caa": {"evals": report.stage_evals({"cams_plain": {"mIoU": 0.5}, "cams": {"mIoU": 0.5}},
                                                   {"cam": {"caa": False}}), "timing": t}}
    report.render_comparison("demo", runs, "base", tmp_path / "c.html", tmp_path / "c.md")
    assert "| no_caa | 50.00 | 0.00 | n/a | n/a |" in (tmp_path / "c.md").read_text()


def test_comparison_seed_column_says_n_a_where_no_network_was_trained(tmp_path):
    import pandas as pd

    seg = {"mIoU": 0.5}
    t = pd.DataFrame([{"stage": "CAMs + CAA", "wall_s": 2.0, "cpu_s": 1, "peak_mem_mb": 1,
                       "jobs": 1, "images_per_s": 1}])
    runs = {
        "base": {"evals": {"cams": {"at_chosen": {"mIoU": 0.5}}, "segmentation": seg,
                           "segmentation_seed1": {"mIoU": 0.54}}, "config": {"segmentation": {"seed": 0}}},
        "one_seed": {"evals": {"cams": {"at_chosen": {"mIoU": 0.5}}, "segmentation": seg}},
        "no_seg": {"evals": {"cams": {"at_chosen": {"mIoU": 0.5}}}},
    }
    for r in runs.values():
        r["timing"] = t
    df = report.render_comparison("demo", runs, "base", tmp_path / "c.html", tmp_path / "c.md")
    seeds = df.set_index("variant")["seeds"]
    assert seeds["base"] == "52.00 ± 2.83 (n=2)" and seeds["one_seed"] == "" and seeds["no_seg"] == "n/a"
    for f in ("c.html", "c.md"):
        assert "nan" not in (tmp_path / f).read_text().lower().replace("nanum", "")


def test_trivial_baselines_on_known_masks(tmp_path):
    from PIL import Image

    from clipes.datasets import Sample

    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 3  # exactly the centre box
    Image.fromarray(gt).save(tmp_path / "g.png")
    s = Sample("a", tmp_path / "a.jpg", (2,), (8, 8), tmp_path / "g.png")
    b = report.trivial_baselines([s], 4)
    assert b["centre box, first label"] == pytest.approx(1.0)
    assert b["all background"] == pytest.approx((48 / 64) / 2)


def test_accuracy_on_the_ignored_pixels_is_counted_from_both_evaluations(tmp_path):
    """The pseudo-mask row says how right the CRF labels are on the pixels CGL ignores;
    the number, derived from the two evaluations, equals a direct count."""
    from clipes import io, metrics
    from clipes.datasets import Sample

    rng = np.random.default_rng(0)
    samples, right_ignored, n_ignored = [], 0, 0
    for d in ("gt", "crf", "masks"):
        (tmp_path / d).mkdir()
    for i in range(3):
        gt = rng.integers(0, 3, (12, 16)).astype(np.uint8)
        gt[0, :4] = 255  # not scored
        labels = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 3, gt.shape)).astype(np.uint8)
        labels[gt == 255] = 1
        ignored = rng.random(gt.shape) < 0.2
        valid = gt != 255
        right_ignored += int((ignored & valid & (labels == gt)).sum())
        n_ignored += int((ignored & valid).sum())
        io.save_mask(tmp_path / "gt" / f"{i}.png", gt)
        io.save_mask(tmp_path / "crf" / f"{i}.png", labels)
        io.save_mask(tmp_path / "masks" / f"{i}.png", np.where(ignored, 255, labels).astype(np.uint8))
        samples.append(Sample(str(i), tmp_path / f"{i}.jpg", (0,), gt.shape, tmp_path / "gt" / f"{i}.png"))
    evals = {"crf_labels": metrics.evaluate_mask_dir(samples, tmp_path / "crf", 3),
             "pseudo_masks": metrics.evaluate_mask_dir(samples, tmp_path / "masks", 3)}
    row = {r["key"]: r for r in report.quality_table(evals)}["pseudo_masks"]
    assert row["ignored"]["right_ignored"] == pytest.approx(100 * right_ignored / n_ignored)
    assert row["ignored"]["ignored"] == pytest.approx(100 * (1 - evals["pseudo_masks"]["coverage"]))
    assert f"{100 * right_ignored / n_ignored:.1f}% of the" in row["note"]
    # without the CRF labels' evaluation (or with other images) nothing is claimed
    evals["crf_labels"]["n_images"] = 2
    assert "ignored" not in {r["key"]: r for r in report.quality_table(evals)}["pseudo_masks"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (CI installs Debian's chromium)")
def test_reports_render_in_a_real_browser(inputs):
    inp, tmp = inputs
    report.render_run(inp, tmp / "r.html", tmp / "r.md")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chrome'}"]
    url = (tmp / "r.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<table") >= 3 and "data:image/png;base64," in dom
    shot = tmp / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
                   capture_output=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (1600, 1200) and img.std() > 5  # not a blank page


def test_prompt_ranking_in_run_report(inputs):
    inp, tmp = inputs
    (tmp / "p.tsv").write_text("template\tsharpness\tn_multilabel\trank\tselected\n"
                               "a clean origami {}.\t1.2345\t6\t1\tTrue\n"
                               "a photo of a {}.\t1.5\t6\t2\tFalse\n")
    inp.prompts = tmp / "p.tsv"
    inp.config["text"] = {"template": "a clean origami {}.", "select_prompt": {"use_selected": False}}
    report.render_run(inp, tmp / "r.html", tmp / "r.md")
    html = (tmp / "r.html").read_text()
    table = html[html.index('id="prompts"'):]
    assert table.index("a clean origami {}.") < table.index("a photo of a {}.")
    assert "1.2345" in table
    assert "| a photo of a {}. | 1.5000 | 2 | 6 |" in (tmp / "r.md").read_text()


def test_benchmarks_read_only_the_named_rules(inputs):
    inp, tmp = inputs
    bench = inp.benchmark_dirs[0]
    b = report.read_benchmarks([f"{bench}:crf,eval_cams"])
    assert sorted(b["rule"]) == ["crf", "eval_cams"]
    assert len(report.read_benchmarks([bench])) == 4


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>|[link](javascript:alert(2))`'


class _Tags:
    """Every start tag and attribute of an HTML page (the standard library's parser)."""

    def __init__(self, html: str):
        from html.parser import HTMLParser

        self.tags, self.attrs = [], []
        outer = self

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                outer.tags.append(tag)
                outer.attrs.extend(a for a, _ in attrs)

        P().feed(html)


def test_reports_escape_every_name_they_did_not_write(inputs):
    """A class, an image id, a dataset folder, a template, a variant note and a background
    word that hold markup stay text: no script element or event attribute reaches the HTML,
    and the Markdown keeps them out of its tables, links and code spans."""
    import pandas as pd

    inp, tmp = inputs
    inp.dataset["class_names"] = ["background", HOSTILE, "dog"]
    inp.dataset["root"] = f"/data/</code>{HOSTILE}"
    inp.dataset["splits"]["train"]["skipped"] = [{"id": HOSTILE, "reason": HOSTILE}]
    inp.dataset["background_removed"] = [HOSTILE]
    inp.config["text"] = {"template": "a ``{}``" + HOSTILE, "select_prompt": {"use_selected": False}}
    (tmp / "p.tsv").write_text("template\tsharpness\tn_multilabel\trank\tselected\n"
                               f"{HOSTILE} {{}}\t1.2\t6\t1\tTrue\n")
    inp.prompts = tmp / "p.tsv"
    report.render_run(inp, tmp / "r.html", tmp / "r.md")
    t = pd.DataFrame([{"stage": "CAMs + CAA", "wall_s": 2.0, "cpu_s": 1, "peak_mem_mb": 1,
                       "jobs": 1, "images_per_s": 1}])
    runs = {"base": {"evals": {}, "timing": t}, "other": {"evals": {}, "timing": t}}
    report.render_comparison(HOSTILE, runs, "base", tmp / "c.html", tmp / "c.md",
                             notes={"other": HOSTILE})
    for page in ("r.html", "c.html"):
        html = (tmp / page).read_text()
        tags = _Tags(html)
        assert "script" not in tags.tags, page
        assert not [a for a in tags.attrs if a.startswith("on")], page
        assert "&lt;script&gt;" in html and "<script>" not in html
    import re

    md = (tmp / "r.md").read_text() + "\n" + (tmp / "c.md").read_text()
    fenced = re.findall(r"^(`{3,})yaml\n.*?^\1$", md, re.M | re.S)
    assert len(fenced) == 1  # the config block is closed by its own fence
    # outside code (shown literally by every Markdown viewer) no markup is left live
    text = re.sub(r"^(`{3,}).*?^\1$", "", md, flags=re.M | re.S)
    text = re.sub(r"(`+)(.+?)\1", "", text)
    assert "alert" in text and "&lt;script&gt;" in text
    bad = [ln for ln in text.splitlines() if "<script" in ln or "<img" in ln
           or re.search(r"(?<!\\)\]\(javascript:", ln)]  # an unescaped link
    assert not bad, bad
    rows = [ln for ln in text.splitlines() if ln.startswith("|") and "alert" in ln]
    assert rows and all("\\|" in ln for ln in rows)  # the name's '|' cannot split a cell


def test_every_number_names_its_split_and_the_paper_difference_is_on_the_same_split(inputs):
    """train and train_aug told apart: the paper's train_aug pseudo-mask number gets a
    difference from this run's train_aug evaluation, its train numbers do not."""
    inp, tmp = inputs
    hist = np.array([[50, 10, 0], [5, 30, 5], [0, 0, 0]])
    from clipes import metrics

    scored = metrics.scores_from_hist(hist)
    inp.evals["pseudo_masks"] = {**scored, "n_images": 10,
                                 "split": {"name": "train_aug", "n_images": 12, "n_scored": 10}}
    ctx = report.render_run(inp, tmp / "r.html", tmp / "r.md")
    md = (tmp / "r.md").read_text()
    row = next(r for r in ctx["quality"] if r["key"] == "pseudo_masks")
    assert row["split"] == "train_aug (10 images)"
    assert row["precision"] == pytest.approx(100 * np.mean([50 / 55, 30 / 40]))
    assert row["recall"] == pytest.approx(100 * np.mean([50 / 60, 30 / 40]))
    paper = {(r["split"], r["what"]): r for r in ctx["paper"]}
    aug = paper[("VOC train_aug (10,582)", "pseudo masks after CRF")]
    assert aug["yours"] == pytest.approx(100 * scored["mIoU"])
    assert aug["delta"] == pytest.approx(100 * scored["mIoU"] - 68.7)
    assert paper[("VOC train (1,464)", "+ CAA + dense CRF")]["delta"] is None
    assert "this run measured it on train_aug (10 images)" in md
    table = next(t for t in ctx["per_class_tables"] if t["stage"] == "pseudo masks (CRF)")
    assert table["columns"] == ["IoU", "precision", "recall", "FP ratio", "FN ratio"]
    cat = next(r for r in table["rows"] if r["class"] == "cat")
    assert cat["FP ratio"] == pytest.approx(100 * 10 / 50) and cat["FN ratio"] == pytest.approx(100 * 10 / 50)
    assert "#### pseudo masks (CRF): train_aug (10 images)" in md


def test_comparison_states_overrides_shares_stages_and_counts_them_once(tmp_path):
    import pandas as pd

    from clipes import metrics

    def timing(cams, crf, seg):
        return pd.DataFrame([{"stage": s, "wall_s": w, "cpu_s": 1, "peak_mem_mb": 1, "jobs": 1,
                              "images_per_s": 1} for s, w in (("CAMs + CAA", cams),
                              ("CRF + confidence", crf), ("segmentation training", seg)) if w])

    ev = {**metrics.scores_from_hist(np.array([[50, 10, 0], [5, 30, 5], [0, 0, 0]])),
          "split": {"name": "train_aug", "n_images": 10, "n_scored": 10}}
    runs = {"base": {"evals": {"pseudo_masks": ev}, "timing": timing(100, 20, 300)},
            "no_crf": {"evals": {"pseudo_masks": ev}, "timing": timing(100, 5, 0)},
            "reference": {"evals": {}, "timing": timing(140, 20, 0)}}
    owners = {"base": {"cams": "base", "crf": "base", "segmentation": "base"},
              "no_crf": {"cams": "base", "crf": "no_crf", "segmentation": "no_crf"},
              "reference": {"cams": "reference", "crf": "reference", "segmentation": "reference"}}
    notes = {"base": report.override_note({}), "no_crf": report.override_note({"crf": {"enabled": False}}),
             "reference": report.override_note({"cam": {"mode": "reference"}})}
    df = report.render_comparison("voc12", runs, "base", tmp_path / "c.html", tmp_path / "c.md",
                                  notes, owners, "voc12", ["background", "cat", "dog"])
    rows = df.set_index("variant")
    assert rows.loc["no_crf", "total (s)"] == pytest.approx(5)  # its CAMs are base's
    assert rows.loc["base", "total (s)"] == pytest.approx(420)
    md = (tmp_path / "c.md").read_text()
    html = (tmp_path / "c.html").read_text()
    assert "crf.enabled=false" in md and "cam.mode=reference" in md and "no overrides" in md
    assert "shared (base)" in md and "shared (base)" in html
    assert "| **all variants** |" in md and "585.0" in md  # 420 + 5 + 160: each stage once
    # the paper's train_aug pseudo-mask number beside each variant's, with the difference
    aug = next(ln for ln in md.splitlines() if "VOC train_aug (10,582)" in ln)
    assert f"{100 * ev['mIoU']:.2f}" in aug and f"{100 * ev['mIoU'] - 68.7:.2f}" in aug
    assert "## Per-class IoU (%)" in md and "| cat |" in md


def test_seeds_give_each_number_and_mean_and_spread(inputs):
    inp, tmp = inputs
    seg = lambda m: {"mIoU": m, "pixel_acc": 0.5, "class_iou": {"0": m}, "n_images": 5}  # noqa: E731
    inp.evals.update(segmentation=seg(0.40), segmentation_seed7=seg(0.44), segmentation_seed9=seg(0.45))
    inp.config["segmentation"] = {"seed": 3}
    ctx = report.render_run(inp, tmp / "r.html", tmp / "r.md")
    row = next(r for r in ctx["quality"] if r["key"] == "segmentation")
    values = [40.0, 44.0, 45.0]
    assert row["seeds"]["seeds"] == {3: 40.0, 7: 44.0, 9: 45.0}
    assert row["seeds"]["mean"] == pytest.approx(np.mean(values))
    assert row["seeds"]["std"] == pytest.approx(np.std(values, ddof=1))
    md = (tmp / "r.md").read_text()
    assert f"mean ± std over 3 seeds {np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" in md
    assert "seed 3: 40.00, seed 7: 44.00, seed 9: 45.00" in md
    assert report.seed_summary({"segmentation": seg(0.4)}, {}) is None
