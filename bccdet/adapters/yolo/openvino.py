"""A YOLO detector run by OpenVINO through ultralytics' own OpenVINO backend (its pre- and post-processing:
letterbox, NMS, mask assembly), so boxes and masks come out as the torch model's (bench.detector_runtime).

The checkpoint is exported once per (weights sha256, OpenVINO version) with dynamic input shapes (tiles,
borders and field shapes vary) under ``$BCCDET_CACHE/openvino/``. ultralytics compiles it with OpenVINO's
defaults (bfloat16 on a CPU that has it natively); :func:`pin_backend` recompiles it at the precision and
thread count asked for. ``ultralytics`` and ``openvino`` are imported inside the functions only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def export_dir(weights: str | Path, sha256: str) -> Path:
    """The OpenVINO export of ``weights`` (an ultralytics ``.pt``), made on first use and then reused."""
    import openvino as ov

    from ...data import cache_dir
    from ...io import sha256_file

    sha256 = sha256 or sha256_file(weights)
    ver = ov.__version__.split("-")[0]
    root = cache_dir() / "openvino" / f"detector-{sha256[:16]}-ov{ver}"
    out = root / "model_openvino_model"
    if (out / "model.xml").is_file() and (out / "metadata.yaml").is_file():
        return out
    from ultralytics import YOLO

    tmp = root.with_name(f".{root.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(weights, tmp / "model.pt")
    made = Path(YOLO(str(tmp / "model.pt")).export(format="openvino", dynamic=True, half=False, verbose=False))
    (tmp / "model.pt").unlink()
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)  # the whole export appears at once
    return root / made.name


def pin_backend(yolo, model_dir: Path, predict_kw: dict, precision: str, threads: int | None) -> None:
    """Set up ``yolo``'s predictor (one prediction on a blank image) and recompile the OpenVINO model of
    ``model_dir`` with ``INFERENCE_PRECISION_HINT`` (``fp32`` -> f32, ``bf16``) and ``threads``. An ultralytics
    whose backend no longer keeps ``compile_model`` / ``ov_compiled_model`` is an error, not a silent bf16."""
    from functools import partial

    import numpy as np
    import openvino as ov

    yolo.predict(np.full((64, 64, 3), 114, np.uint8), **predict_kw)
    be = _backend(yolo)
    if not hasattr(be, "compile_model"):
        raise RuntimeError("this ultralytics' OpenVINO backend keeps no compile_model: use runtime torch")
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    core = ov.Core()
    be.compile_model = partial(core.compile_model, device_name="CPU", config=cfg)
    be.ov_compiled_model = be.compile_model(core.read_model(str(next(Path(model_dir).glob("*.xml")))))


def _backend(yolo):
    """The object of ``yolo``'s predictor that holds ``ov_compiled_model``: the backend itself first, as
    AutoBackend hands unknown attributes on to it (setting them on AutoBackend would not reach it)."""
    auto = yolo.predictor.model
    be = next((b for b in (getattr(auto, "backend", None), auto) if b is not None and hasattr(b, "ov_compiled_model")),
              None)
    if be is None:
        raise RuntimeError("this ultralytics' OpenVINO backend keeps no ov_compiled_model: use runtime torch")
    return be


def compiled_precision(yolo) -> str:
    """``fp32`` or ``bf16``: what the loaded OpenVINO detector runs at (for tests and the bench)."""
    t = str(_backend(yolo).ov_compiled_model.get_property("INFERENCE_PRECISION_HINT"))
    return "bf16" if "bf16" in t or "bfloat16" in t else "fp32"
