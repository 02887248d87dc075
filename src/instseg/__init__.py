"""instseg: instance segmentation, every major family behind one contract."""

from instseg.api import evaluate, evaluate_results, load, load_prompts, predict, train
from instseg.cropped_masks import CroppedMasks, cropped_masks
from instseg.predictor import Predictor
from instseg.structures import Category, Instances
from instseg.version import __version__

__all__ = [
    "Category",
    "CroppedMasks",
    "Instances",
    "Predictor",
    "__version__",
    "cropped_masks",
    "evaluate",
    "evaluate_results",
    "load",
    "load_prompts",
    "predict",
    "train",
]
