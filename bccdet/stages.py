"""Stage protocols: each stage takes an RGB image and Cells and returns Cells."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .types import Cells, SmearMeta


class Detector(Protocol):
    name: str
    sha256: str

    def __call__(self, image: np.ndarray, meta: SmearMeta) -> Cells: ...


class Refiner(Protocol):
    name: str
    sha256: str

    def __call__(self, image: np.ndarray, cells: Cells) -> Cells: ...


class Classifier(Protocol):
    name: str
    sha256: str

    def __call__(self, image: np.ndarray, cells: Cells) -> Cells: ...
