import re

from PIL import Image

from instseg.demo import demo_data, run_demo


def test_bundled_demo_data_is_complete():
    root = demo_data()
    assert len(list((root / "train").glob("*.png"))) == 40
    assert len(list((root / "val").glob("*.png"))) == 10
    assert (root / "README.md").read_text().count("CC0") >= 1


def test_demo_writes_summary_pictures_and_curve(tmp_path):
    demo = run_demo(tmp_path, minutes=0.05, device="cpu", progress=False)
    text = demo.summary.read_text()
    # The metrics row holds real numbers from the evaluation, not the template alone.
    row = re.search(r"^\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert row is not None, text
    assert all(0.0 <= float(v) <= 1.0 for v in row.groups()[:4]) and float(row.group(5)) > 0
    assert demo.table() in text
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    pairs = sorted((tmp_path / "overlays").glob("val_*.png"))
    assert len(pairs) == 10
    with Image.open(pairs[0]) as im:  # ground truth beside prediction, enlarged from 256 px
        assert im.width > 2 * 512
    assert demo.contact_sheet.is_file() and "overlays/contact_sheet.png" in text
    assert (tmp_path / "train" / "checkpoint" / "model.safetensors").is_file()
