"""The click protocol and its metrics, on models whose answers are known."""

import numpy as np
import torch

from instseg.cli import main
from instseg.eval.interactive import evaluate_interactive, farthest_from_boundary, next_click
from instseg.structures import Instances


def square(y0, y1, x0, x1, size=(40, 40)):
    m = np.zeros(size, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


class Scripted:
    """Answers the k-th call for an object with ``answers[k]`` (the last one after that); records prompts."""

    def __init__(self, answers):
        self.answers, self.calls, self.logits = answers, [], torch.zeros(1, 1, 4, 4)

    def set_image(self, image):
        self.calls.clear()

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
        clicks = len(points) if points is not None else 0
        self.calls.append(
            (
                None if points is None else list(points),
                None if labels is None else list(labels),
                box,
                multimask,
            )
        )
        mask = torch.from_numpy(self.answers[min(clicks, len(self.answers)) - 1 if clicks else -1])
        return Instances(
            torch.zeros(1, 4), torch.ones(1, dtype=torch.int64), torch.ones(1), mask[None], (40, 40)
        )


def test_first_click_is_the_centre_and_corrections_go_where_the_error_is_deepest():
    truth = square(10, 31, 10, 31)
    assert farthest_from_boundary(truth)[0] == (20, 20)
    half = square(10, 31, 10, 20)  # the left half found: click in the missed right half, positive
    (x, y), label = next_click(half, truth)
    assert label == 1 and x >= 20 and 10 <= y < 31
    spill = truth | square(0, 40, 32, 40)  # the object and a slab beyond it: click in the slab, negative
    (x, y), label = next_click(spill, truth)
    assert label == 0 and x >= 32


def test_metrics_count_clicks_until_the_object_is_right():
    truth = square(10, 31, 10, 31)
    empty = np.zeros_like(truth)
    model = Scripted([empty, truth])  # wrong after 1 click, right from the 2nd on; the box is right
    report = evaluate_interactive(model, [(torch.zeros(3, 40, 40), [truth])], max_clicks=5, progress=False)
    assert report.metrics["mIoU@1"] == 0.0 and report.metrics["mIoU@3"] == 1.0
    assert report.metrics["NoC@85"] == 2.0 and report.metrics["NoC@90"] == 2.0
    assert report.metrics["box mIoU"] == 1.0
    first, second = model.calls[0], model.calls[1]
    assert first[0] == [(20, 20)] and first[3] is True  # centre click, three readings
    assert second[0][1][0] >= 10 and second[1] == [1, 1] and second[3] is False
    never = evaluate_interactive(Scripted([empty]), [(torch.zeros(3, 40, 40), [truth])], 4, progress=False)
    assert never.metrics["NoC@85"] == 4.0 and never.metrics["mIoU@1"] == 0.0


def test_eval_cli_with_prompts(tiny_coco, tmp_path, capsys):
    from instseg.engine.checkpoint import save_checkpoint
    from instseg.models.build import checkpoint_meta
    from instseg.models.sam.model import OBJECT, SAM
    from tests.models.test_sam import TINY

    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "sam", SAM(TINY).state_dict(), checkpoint_meta("sam", TINY, list(OBJECT)))
    args = [
        "eval",
        "--checkpoint",
        str(ck),
        "--data",
        str(tiny_coco),
        "--device",
        "cpu",
        "--max-objects",
        "2",
    ]
    assert main([*args, "--prompts", "points", "--max-clicks", "3", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "mIoU@1 | mIoU@3 | NoC@85 | NoC@90 | box mIoU" in out
    assert (tmp_path / "ev" / "interactive_iou.png").stat().st_size > 1000


def test_the_instance_baseline_answers_with_the_mask_that_agrees_with_most_clicks():
    from instseg.eval.interactive import InstanceBaseline

    big, small = square(5, 35, 5, 35), square(10, 20, 10, 20)
    masks = torch.from_numpy(np.stack([big, small]))
    found = Instances(
        torch.tensor([[5.0, 5, 35, 35], [10, 10, 20, 20]]),
        torch.ones(2, dtype=torch.int64),
        torch.tensor([0.9, 0.8]),
        masks,
        (40, 40),
    )
    baseline = InstanceBaseline(lambda image: found)
    baseline.set_image(None)
    assert torch.equal(baseline.predict([(15, 15)], [1]).masks[0], masks[0])  # both contain it: best score
    assert torch.equal(baseline.predict([(15, 15), (30, 30)], [1, 0]).masks[0], masks[1])
    assert not baseline.predict([(2, 2)], [1]).masks.any()  # no mask contains it
    # a negative click inside both: no mask agrees with every click, so the one agreeing with most
    two = baseline.predict([(15, 15), (30, 30), (12, 12)], [1, 0, 0])
    assert torch.equal(two.masks[0], masks[1])
    assert torch.equal(baseline.predict(box=[9, 9, 21, 21]).masks[0], masks[1])
