import numpy as np
import torch
from PIL import Image

import instseg


def test_load_predict_evaluate(trained, tiny_coco, tmp_path):
    predictor = instseg.load(trained.checkpoint, device="cpu")
    path = tiny_coco / "val" / "val_001.png"
    from_path = predictor.predict(path)
    array = np.asarray(Image.open(path))
    from_array = predictor(array)
    from_tensor = instseg.predict(predictor, [torch.from_numpy(array.copy()).permute(2, 0, 1)])[0]
    assert isinstance(from_path, instseg.Instances) and from_path.image_size == (64, 64)
    assert torch.equal(from_path.masks, from_array.masks) and torch.equal(from_path.masks, from_tensor.masks)
    high = predictor.predict(path, min_score=0.5)
    assert (high.scores >= 0.5).all() and len(high) <= len(from_path)
    ev = instseg.evaluate(predictor, tiny_coco, max_dets=(1, 10, 100), out=tmp_path, progress=False)
    assert ev.images == 3 and (tmp_path / "results.json").is_file()
    assert ev.metrics["segm"]["AP"] == trained.metrics["segm"]["AP"]  # same weights, same numbers
