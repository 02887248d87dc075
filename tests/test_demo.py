import re

from PIL import Image

from instseg.demo import demo_data, run_demo

ROW = re.compile(r"^\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", re.M)


def test_bundled_demo_data_is_complete():
    root = demo_data()
    assert len(list((root / "train").glob("*.png"))) == 40
    assert len(list((root / "val").glob("*.png"))) == 10
    assert (root / "README.md").read_text().count("CC0") >= 1


def test_demo_shows_the_bundled_model_then_one_it_trains(tmp_path):
    demo = run_demo(tmp_path, minutes=0.05, device="cpu", progress=False)
    text = demo.summary.read_text()
    # Two metrics rows with real numbers from the evaluations, not the template alone.
    rows = ROW.findall(text)
    assert len(rows) == 2, text
    for row in rows:
        assert all(0.0 <= float(v) <= 1.0 for v in row[:4]) and float(row[4]) > 0
    assert [p.table() in text for p in demo.parts] == [True, True]
    # the bundled model works with no training; a few seconds of training does not come close
    assert demo.pretrained.metrics["segm"]["AP"] > 0.4 > demo.trained.metrics["segm"]["AP"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    for part in ("pretrained", "trained"):
        pairs = sorted((tmp_path / part).glob("val_*.png"))
        assert len(pairs) == 10
        with Image.open(pairs[0]) as im:  # ground truth beside prediction, enlarged from 256 px
            assert im.width > 2 * 512
        assert f"{part}/contact_sheet.png" in text
    assert (tmp_path / "train" / "checkpoint" / "model.safetensors").is_file()


def test_demo_without_training_shows_the_bundled_model_only(tmp_path):
    demo = run_demo(tmp_path, minutes=0, device="cpu", progress=False)
    assert demo.trained is None and demo.pretrained is not None
    assert len(ROW.findall(demo.summary.read_text())) == 1
    assert not (tmp_path / "train").exists()
