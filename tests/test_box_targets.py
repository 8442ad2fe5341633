"""`train detector --box-labels`: masks from one label set, box targets from another (bccdet.adapters.yolo.BoxTargets)."""

import contextlib
from pathlib import Path

import cv2
import numpy as np
import pytest

CELLS = ((40, 40), (110, 50), (60, 115))


def _set(root: Path, shape: str, cls: int = 1, n: int = 4) -> Path:
    """n 160 px fields with three round cells; labels are 10 px diamonds (a tight mask) or 40 px squares (a box)."""
    (root / "images/train").mkdir(parents=True)
    (root / "labels/train").mkdir(parents=True)
    for k in range(n):
        img = np.full((160, 160, 3), 200, np.uint8)
        lines = []
        for cx, cy in CELLS:
            cv2.circle(img, (cx, cy), 18, (120, 60, 160), -1)
            r = 5 if shape == "diamond" else 20
            pts = ([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)] if shape == "diamond"
                   else [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)])
            lines.append(f"{cls} " + " ".join(f"{x / 160:.5f} {y / 160:.5f}" for x, y in pts))
        cv2.imwrite(str(root / f"images/train/f{k}.png"), img)
        (root / f"labels/train/f{k}.txt").write_text("\n".join(lines) + "\n")
    return root


def _box_widths_px(images: Path, ctx) -> np.ndarray:
    """Box-target widths (px) of every instance of an augmented (mosaic, scale, translate, flip) training set."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    cfg = get_cfg(overrides=dict(task="segment", imgsz=160, mosaic=1.0, scale=0.3, translate=0.1, fliplr=0.5,
                                 cache=False))
    data = {"names": {0: "rbc", 1: "wbc", 2: "platelet"}, "nc": 3, "channels": 3}
    with ctx:
        ds = build_yolo_dataset(cfg, str(images), 4, data, mode="train", stride=32)
        return np.concatenate([ds[i]["bboxes"][:, 2].numpy() for i in range(len(ds))]) * 160


def test_box_targets_come_from_the_box_labels_through_augmentation(tmp_path):
    from bccdet.adapters.yolo import BoxTargets, setup_offline

    setup_offline()
    from ultralytics.data import augment, dataset

    masks = _set(tmp_path / "masks", "diamond")
    boxes = _set(tmp_path / "boxes", "square")
    originals = (dataset.YOLODataset.get_labels, augment.RandomPerspective.apply_segments)
    plain = _box_widths_px(masks / "images/train", contextlib.nullcontext())
    bt = BoxTargets(boxes)
    kept = _box_widths_px(masks / "images/train", bt)
    assert bt.replaced == 4 and bt.mismatched == 0
    # ultralytics alone boxes the 10 px diamonds; with the box labels the targets are the 40 px squares, scaled
    # by the augmentation (scale 0.7-1.3, mosaic) exactly as ultralytics scales its own boxes
    assert np.median(plain) < 16 and np.median(kept) > 2.5 * np.median(plain)
    assert (dataset.YOLODataset.get_labels, augment.RandomPerspective.apply_segments) == originals  # undone on exit


def test_box_targets_keep_polygon_boxes_where_the_labels_disagree(tmp_path):
    from bccdet.adapters.yolo import BoxTargets, setup_offline

    setup_offline()
    masks = _set(tmp_path / "masks", "diamond", cls=1)
    other = _set(tmp_path / "other", "square", cls=0)  # same images, other classes: not the same cells
    bt = BoxTargets(other)
    w = _box_widths_px(masks / "images/train", bt)
    assert bt.replaced == 0 and bt.mismatched == 4 and np.median(w) < 16
    with pytest.raises(FileNotFoundError, match="no labels/ folder"):
        BoxTargets(tmp_path / "nowhere")


def test_train_detector_refuses_box_labels_without_labels(tmp_path, cli):
    _set(tmp_path / "m", "diamond")
    (tmp_path / "m/data.yaml").write_text(f"path: {tmp_path / 'm'}\ntrain: images/train\nval: images/train\n"
                                          "names: {0: rbc, 1: wbc, 2: platelet}\n")
    r = cli("train", "detector", "--data", tmp_path / "m/data.yaml", "--box-labels", tmp_path / "none",
            "--project", tmp_path / "runs", "--epochs", "1")
    assert r.returncode == 2 and "no labels/ folder" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def test_gray_augment_turns_the_given_share_grey_and_is_undone():
    from bccdet.adapters.yolo import GrayAugment, setup_offline

    setup_offline()
    from ultralytics.data.augment import RandomHSV

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(400)]
    hsv = RandomHSV(0.1, 0.5, 0.3)
    np.random.seed(0)

    def grey(im):
        return bool((im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all())

    with GrayAugment(0.25):
        out = [hsv({"img": im.copy()})["img"] for im in imgs]
    share = np.mean([grey(im) for im in out])
    assert 0.18 < share < 0.32, share
    assert not any(grey(hsv({"img": im.copy()})["img"]) for im in imgs[:50])  # patch undone on exit
    with pytest.raises(ValueError):
        GrayAugment(1.5)
