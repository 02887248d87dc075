import numpy as np
import pytest
import torch
from PIL import Image

from instseg.data.images import list_images, read_image
from instseg.errors import DataError


def test_grey_rgba_and_16bit_become_rgb(tmp_path):
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "g.png")
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000).save(tmp_path / "d.png")
    g, a, d = (read_image(tmp_path / n) for n in ("g.png", "a.png", "d.png"))
    assert g.shape == a.shape == d.shape == (3, 4, 5) and g.dtype == torch.uint8
    assert int(g[0, 0, 0]) == 77 and a[:, 0, 0].tolist() == [200, 0, 0]
    assert int(d.min()) == 0 and int(d.max()) == 255


def test_exif_orientation_is_applied_unless_annotations_use_stored_pixels(tmp_path):
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255  # top-left marker
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    upright = read_image(tmp_path / "r.jpg")
    assert upright.shape == (3, 6, 4)
    assert upright[0, 0, -1] > 200  # marker moved to the top-right
    stored = read_image(tmp_path / "r.jpg", expected_size=(4, 6))
    assert stored.shape == (3, 4, 6)
    with pytest.raises(DataError, match="image is 4x6 but the annotations say 9x9"):
        read_image(tmp_path / "r.jpg", expected_size=(9, 9))


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"bad.png: cannot read image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"nope.png: image file not found"):
        read_image(tmp_path / "nope.png")


def test_list_images_expands_folders_globs_and_dedups(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = list_images([tmp_path, str(tmp_path / "*.png"), tmp_path / "a.jpg"])
    assert [p.name for p in found] == ["a.jpg", "b.png"]
    with pytest.raises(DataError, match="no such file"):
        list_images([str(tmp_path / "*.tif")])
