"""Training jobs as the command line runs them: the inputs checked (before any run folder is made), registered
names resolved, then the adapters' ``train`` (:mod:`bccdet.adapters.yolo`, :mod:`bccdet.adapters.classifier`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .io import InputError


def check_data_yaml(data: Path) -> None:
    """A YOLO data.yaml whose train images exist, checked before ultralytics creates a run folder."""
    import yaml

    data = Path(data)
    if not data.is_file():
        raise InputError(f"{data}: no such data.yaml")
    try:
        cfg = yaml.safe_load(data.read_text(errors="strict"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{data}: not a YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or "train" not in cfg or "names" not in cfg:
        raise InputError(f"{data}: not a YOLO data.yaml (needs train: and names:; make one with `bccdet convert`)")
    base = Path(cfg.get("path") or data.parent)
    if not base.is_absolute():
        base = data.parent / base
    for sp in ("train", "val"):
        for rel in ([cfg[sp]] if isinstance(cfg.get(sp), str) else cfg.get(sp) or []):
            if not (base / rel).exists():
                raise InputError(f"{data}: {sp} images {base / rel} do not exist")


def train_detector(data: Path, *, box_labels: Path | None = None, **options) -> Path:
    """Check ``data`` (:func:`check_data_yaml`) and ``box_labels`` (a converted set's root), then train the
    detector (:func:`bccdet.adapters.yolo.train`, which takes ``options`` and extra ultralytics arguments);
    returns best.pt."""
    check_data_yaml(data)
    if box_labels is not None and not (Path(box_labels) / "labels").is_dir():
        raise InputError(f"--box-labels {box_labels}: no labels/ folder there (give a converted set's root)")
    from .adapters.yolo import train

    return train(data, box_labels=box_labels, **options)


def train_classifier(data: Sequence[Path], out: Path, *, init: str | None = None, imagenet: Path | None = None,
                     log: Callable[[str], None] = print, **options) -> Path:
    """Check the converted classify folders ``data`` and ``imagenet``, resolve ``init`` (a registered
    classifier or a .pt), then train (:func:`bccdet.adapters.classifier.train` with ``options``); returns the
    saved classifier."""
    if imagenet is not None and not Path(imagenet).is_file():
        raise InputError(f"{imagenet}: no such file")
    for d in map(Path, data):
        if not (d / "train").is_dir() and not (d / "manifest.csv").is_file():
            raise InputError(f"{d}: not a converted classify folder (no train/ and no manifest.csv)")
    from .adapters.classifier import train

    init_path = None
    if init:
        from .weights import resolve

        init_path, _, _ = resolve(init, "classifier")
    return train([str(d) for d in data], out, init=init_path, imagenet=imagenet, log=log, **options)
