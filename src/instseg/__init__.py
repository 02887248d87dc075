"""instseg: instance segmentation, every major family behind one contract."""

from instseg.api import evaluate, evaluate_results, load, predict, train
from instseg.predictor import Predictor
from instseg.structures import Category, Instances
from instseg.version import __version__

__all__ = [
    "Category",
    "Instances",
    "Predictor",
    "__version__",
    "evaluate",
    "evaluate_results",
    "load",
    "predict",
    "train",
]
