"""Chains the stages (detect -> refine -> classify WBCs -> type red cells); imports no ML framework itself."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import is_grey
from .stages import Classifier, Detector, Refiner
from .types import Cells, SmearMeta


@dataclass
class Pipeline:
    detector: Detector
    refiner: Refiner | None = None
    classifier: Classifier | None = None
    morphology: Classifier | None = None  # red-cell morphology (adapters.morphology.MorphologyStage)
    timings: dict = field(default_factory=dict)

    def models(self) -> dict:
        out = {}
        for key, st in (("detector", self.detector), ("refiner", self.refiner), ("classifier", self.classifier),
                        ("rbc_morphology", self.morphology)):
            out[key] = None if st is None else {"name": st.name, "sha256": st.sha256}
            if getattr(st, "precision", None):  # numbers as computed: SAM's encoder runs bf16 where native
                out[key]["precision"] = st.precision
            if key == "classifier" and getattr(st, "threshold", None) is not None:
                out[key]["review_threshold"] = float(st.threshold)
        return out

    def run(self, image: np.ndarray, path: str | Path = "") -> Cells:
        h, w = image.shape[:2]
        meta = SmearMeta(path=str(path), width=w, height=h, grey=is_grey(image))
        self.timings = {}
        t0 = time.perf_counter()
        cells = self.detector(image, meta)
        t1 = time.perf_counter()
        self.timings["detect"] = (t1 - t0) * 1e3
        if self.refiner is not None and len(cells):
            cells = self.refiner(image, cells)
            t2 = time.perf_counter()
            self.timings["refine"] = (t2 - t1) * 1e3
            t1 = t2
        if self.classifier is not None and len(cells):
            cells = self.classifier(image, cells)
            t2 = time.perf_counter()
            self.timings["classify"] = (t2 - t1) * 1e3
            t1 = t2
        if self.morphology is not None and len(cells):
            cells = self.morphology(image, cells)
            self.timings["rbc_morphology"] = (time.perf_counter() - t1) * 1e3
        self.timings["total"] = (time.perf_counter() - t0) * 1e3
        return cells
