import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.datasets import CocoTrainDataset, SeededEpochSampler
from instseg.data.transforms import TrainTransform
from instseg.masks import masks_to_boxes


def _dataset(tiny_coco, **kw):
    return CocoTrainDataset(CocoIndex(resolve_source(tiny_coco, "train")), TrainTransform(**kw))


def test_masks_boxes_and_pixels_stay_aligned(tiny_coco):
    ds = _dataset(tiny_coco, scale_range=(0.6, 1.7), crop_size=40, hflip=True, vflip=True)
    seen = 0
    for i in range(len(ds)):
        for seed in range(6):
            img, target = ds[(i, seed)]
            assert img.dtype == torch.float32 and float(img.min()) >= 0 and float(img.max()) <= 1
            masks = target["masks"]
            assert masks.shape[1:] == img.shape[1:] and masks.dtype == torch.uint8
            assert len(masks) == len(target["boxes"]) == len(target["labels"])
            assert torch.equal(target["boxes"], masks_to_boxes(masks.bool()))
            for m in masks.bool():
                # Objects are bright and the background is dark: the mask must sit on the object.
                assert img[:, m].max(0).values.mean() > 0.3
                seen += 1
    assert seen > 20


def test_same_seed_same_sample_and_different_seed_differs(tiny_coco):
    ds = _dataset(tiny_coco, scale_range=(0.5, 2.0), crop_size=32, hflip=True, color_jitter=0.3)
    a, ta = ds[(0, 123)]
    b, tb = ds[(0, 123)]
    c, _ = ds[(0, 124)]
    assert torch.equal(a, b) and torch.equal(ta["masks"], tb["masks"])
    assert a.shape != c.shape or not torch.equal(a, c)


def test_image_without_objects_gives_empty_target(tiny_coco):
    ds = _dataset(tiny_coco)
    img, target = ds[(len(ds) - 1, 0)]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, *img.shape[1:])


def test_sampler_resumes_mid_epoch_with_the_same_draws():
    full = iter(SeededEpochSampler(7, batch_size=3, seed=5))
    draws = [next(full) for _ in range(30)]
    resumed = iter(SeededEpochSampler(7, batch_size=3, seed=5, start_step=4))
    assert [next(resumed) for _ in range(18)] == draws[12:30]
    assert sorted(i for i, _ in draws[:7]) == list(range(7))  # each epoch is a permutation


def test_crops_leave_out_slivers_of_objects_they_cut():
    """With ``crop_min_visible=1``, only objects wholly inside a crop are kept; without it, crops keep
    the slivers they cut."""
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    objects = []
    for y, x in [(2, 2), (2, 20), (17, 11), (30, 30), (28, 5)]:
        mask = np.zeros((40, 40), dtype=np.uint8)
        mask[y : y + 6, x : x + 6] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        objects.append({"rle": rle, "bbox": (x, y, x + 6, y + 6), "label": 1})
    areas = {True: [], False: []}
    for whole in (True, False):
        transform = TrainTransform(crop_size=20, hflip=False, crop_min_visible=1.0 if whole else 0.0)
        for seed in range(40):
            torch.manual_seed(seed)
            _, target = transform(image, objects)
            areas[whole] += target["masks"].flatten(1).sum(1).tolist()
    assert areas[True] and set(areas[True]) == {36}
    assert min(areas[False]) < 36
    with pytest.raises(ValueError, match="crop_min_visible"):
        TrainTransform(crop_min_visible=1.5)
