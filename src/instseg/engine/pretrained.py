"""Models shipped inside the package, loaded by name where a checkpoint path is expected.

``instseg.load("nuclei")``, ``instseg predict --model nuclei`` and
``instseg train --init nuclei`` all find the bundled file through
:func:`bundled_checkpoint`. Each model has a folder under
``instseg/assets/models`` holding its ``model.safetensors`` (weights and
metadata in one file, half precision to keep the package small) and its
``MODEL_CARD.md``; ``benchmarks/nuclei_model.py`` makes both.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from instseg.engine.checkpoint import WEIGHTS

CARD = "MODEL_CARD.md"


def models_folder() -> Path:
    return Path(str(resources.files("instseg") / "assets" / "models"))


def bundled_models() -> list[str]:
    """Names of the models this installation ships."""
    folder = models_folder()
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / WEIGHTS).is_file())


def bundled_checkpoint(name: str) -> Path | None:
    """The weights file of bundled model ``name``, or None when no bundled model has that name."""
    file = models_folder() / name / WEIGHTS
    return file if name and "/" not in name and file.is_file() else None


def model_card(name: str) -> Path | None:
    card = models_folder() / name / CARD
    return card if card.is_file() else None
