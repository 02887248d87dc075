"""instseg: instance segmentation, every major family behind one contract."""

__version__ = "0.1.0"

from instseg.api import evaluate, evaluate_results, load, predict, train
from instseg.predictor import Predictor
from instseg.structures import Category, Instances

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
