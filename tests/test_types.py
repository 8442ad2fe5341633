import json
import subprocess
import sys

import numpy as np
import pytest

from bccdet.types import KINDS, Cells, CellsError, SmearMeta, mask_to_polygon, normalize_kind, rle_decode, rle_encode


def disc_cells(h=120, w=160):
    """Three cells with real disc masks (a touching pair and one on the border)."""
    yy, xx = np.mgrid[:h, :w]
    specs = [(40, 50, 15, "rbc"), (68, 50, 13, "wbc"), (150, 110, 12, "platelet")]
    full, boxes, kinds = [], [], []
    for cx, cy, r, k in specs:
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        ys, xs = np.nonzero(m)
        full.append(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        kinds.append(k)
    meta = SmearMeta(path="synthetic.png", width=w, height=h)
    return Cells.from_full_masks(np.array(boxes, np.float32), kinds, full, meta=meta, score=[0.9, 0.8, 0.7]), np.stack(full)


def test_validation_errors():
    with pytest.raises(CellsError, match="shape"):
        Cells(xyxy=np.zeros((2, 3)), kind=["rbc", "rbc"])
    with pytest.raises(CellsError, match="unknown cell kind"):
        Cells(xyxy=np.zeros((1, 4)), kind=["neutrophil"])
    with pytest.raises(CellsError, match="x2 >= x1"):
        Cells(xyxy=[[10, 0, 5, 5]], kind=["rbc"])
    with pytest.raises(CellsError, match="NaN"):
        Cells(xyxy=[[np.nan, 0, 5, 5]], kind=["rbc"])
    with pytest.raises(CellsError, match="expected 2"):
        Cells(xyxy=np.zeros((2, 4)), kind=["rbc", "wbc"], score=[1.0])


def test_indexing_concat_counts():
    cells, full = disc_cells()
    assert len(cells) == 3 and cells.counts() == {"rbc": 1, "wbc": 1, "platelet": 1}
    sub = cells[cells.kind != "rbc"]
    assert len(sub) == 2 and list(sub.kind) == ["wbc", "platelet"]
    assert np.array_equal(sub.full_mask(0), full[1])
    both = Cells.concat([cells, sub])
    assert len(both) == 5 and both.counts()["wbc"] == 2
    assert len(Cells.empty()) == 0 and Cells.empty().counts() == {k: 0 for k in KINDS}


def test_masks_are_cropped_not_full_image():
    cells, full = disc_cells()
    for i in range(len(cells)):
        m = cells.masks[i]
        x1, y1, x2, y2 = cells.xyxy[i]
        assert m.shape == (int(y2 - y1), int(x2 - x1))  # crop of the box, not 120x160
        assert np.array_equal(cells.full_mask(i), full[i])


def test_supervision_roundtrip():
    cells, full = disc_cells()
    det = cells.to_detections()
    assert det.mask.shape == (3, 120, 160)
    assert list(det.class_id) == [KINDS.index(k) for k in cells.kind]
    back = Cells.from_detections(det, meta=cells.meta)
    assert np.allclose(back.xyxy, cells.xyxy)
    assert list(back.kind) == list(cells.kind)
    assert np.allclose(back.score, cells.score)
    assert np.array_equal(back.full_masks(), full)


def test_coco_roundtrip_rle():
    cells, full = disc_cells()
    anns = cells.to_coco(image_id=7)
    json.dumps(anns)  # serialisable
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns)
    assert [a["area"] for a in anns] == [float(m.sum()) for m in full]
    back = Cells.from_coco(anns, cells.meta)
    assert list(back.kind) == list(cells.kind)
    assert np.allclose(back.xyxy, cells.xyxy)
    assert np.array_equal(back.full_masks(), full)


def test_rle_matches_pycocotools_decoding():
    m = np.zeros((30, 40), bool)
    m[5:20, 7:33] = True
    m[10, 10] = False
    r = rle_encode(m)
    assert r["size"] == [30, 40]
    assert np.array_equal(rle_decode(r), m)


def test_yolo_detect_roundtrip():
    cells, _ = disc_cells()
    lines = cells.to_yolo()
    assert all(len(ln.split()) == 5 for ln in lines)
    back = Cells.from_yolo(lines, cells.meta)
    assert np.allclose(back.xyxy, cells.xyxy, atol=0.01)
    assert list(back.kind) == list(cells.kind)


def test_yolo_segment_roundtrip_keeps_mask_shape():
    cells, full = disc_cells()
    lines = cells.to_yolo(segments=True)
    back = Cells.from_yolo(lines, cells.meta)
    for i in range(len(cells)):
        a, b = full[i], back.full_mask(i)
        iou = (a & b).sum() / (a | b).sum()
        assert iou > 0.85, (i, iou)  # polygon simplification costs a little at the rim only


def test_yolo_bad_lines():
    meta = SmearMeta(width=100, height=100)
    with pytest.raises(CellsError, match="class 7"):
        Cells.from_yolo(["7 0.5 0.5 0.1 0.1"], meta)
    with pytest.raises(CellsError, match="not numbers"):
        Cells.from_yolo(["0 a b c d"], meta)
    with pytest.raises(CellsError, match="expected 5 numbers"):
        Cells.from_yolo(["0 0.5 0.5 0.1"], meta)
    assert len(Cells.from_yolo(["", "  "], meta)) == 0


def test_normalize_kind_aliases():
    assert normalize_kind("Platelets") == "platelet"
    assert normalize_kind("RBC") == "rbc"
    assert normalize_kind("White Blood Cell") == "wbc"
    with pytest.raises(CellsError):
        normalize_kind("cells")


def test_mask_to_polygon_empty():
    assert mask_to_polygon(np.zeros((5, 5), bool)) is None


def test_import_bccdet_is_light():
    code = (
        "import sys, bccdet, bccdet.cli, bccdet.types, bccdet.io, bccdet.convert.common, bccdet.weights;"
        "heavy=[m for m in ('torch','ultralytics','fiftyone','ray','supervision','timm') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("first", ["bccdet.cli.curate", "bccdet.cli.batch", "bccdet.cli.common", "bccdet.cli"])
def test_cli_modules_import_in_any_order(first):
    """Each CLI module imports on its own, before bccdet.cli (the curate commands once failed: a circular import)."""
    code = (f"import {first}, bccdet.cli;"
            "names={c.name or c.callback.__name__ for c in bccdet.cli.app.registered_commands};"
            "assert {'analyze','classify','batch','curate','curate-cls'} <= names, names")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_documented_command_runs_from_cli_py(cli):
    """docs/batch.md and docs/curation.md tell users `python cli.py batch|curate ...`: each must exist there."""
    for cmd in ("batch", "curate", "curate-cls", "classify", "analyze"):
        r = cli(cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, (cmd, r.stdout[-500:], r.stderr[-500:])


def test_unfamiliar_column_follows_indexing_concat_and_detections():
    c = Cells(xyxy=[[0, 0, 5, 5], [10, 10, 20, 20], [30, 30, 40, 40]], kind=["wbc", "wbc", "rbc"],
              label=["neutrophil", "blast", None], unfamiliar=[False, True, False])
    assert list(c[[1, 2]].unfamiliar) == [True, False]
    assert list(Cells.concat([c, c[[1]]]).unfamiliar) == [False, True, False, True]
    assert list(Cells.from_detections(c.to_detections()).unfamiliar) == [False, True, False]
    assert list(Cells(xyxy=[[0, 0, 1, 1]], kind=["rbc"]).unfamiliar) == [False]  # default: not flagged


def test_rescaled_maps_cells_back_to_the_full_image():
    """Cells found in an image shrunk by 0.25 land on the same discs of the full image."""
    import cv2

    full = np.zeros((800, 1200), np.uint8)
    cv2.circle(full, (300, 400), 120, 1, -1)
    cv2.ellipse(full, (900, 300), (160, 90), 0, 0, 360, 1, -1)
    small = cv2.resize(full, (300, 200), interpolation=cv2.INTER_AREA) > 0
    n, lab, st, _ = cv2.connectedComponentsWithStats(small.astype(np.uint8))
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in st[1:]]
    masks = [(lab == k + 1)[y:y + h, x:x + w] for k, (x, y, w, h, _) in enumerate(st[1:])]
    cells = Cells(xyxy=np.array(boxes, np.float32), kind=["wbc", "rbc"], masks=masks, label=["lymphocyte", None],
                  meta=SmearMeta(width=300, height=200))
    meta = SmearMeta(path="x", width=1200, height=800, scale=0.25)
    out = cells.rescaled(0.25, meta)
    assert out.meta is meta and list(out.label) == ["lymphocyte", None] and list(out.kind) == ["wbc", "rbc"]
    np.testing.assert_allclose(out.xyxy, cells.xyxy * 4)
    for i in range(2):
        m = out.full_mask(i)
        n2, lab2 = cv2.connectedComponents(full)
        truth = lab2 == lab2[int(out.xyxy[i, 1] + out.xyxy[i, 3]) // 2, int(out.xyxy[i, 0] + out.xyxy[i, 2]) // 2]
        assert (m & truth).sum() / (m | truth).sum() > 0.95
        assert abs(int(m.sum()) - int(truth.sum())) < 0.02 * truth.sum()  # enlarged masks neither grow nor shrink
    assert cells.xyxy[0, 2] < 300 and cells.masks[0].shape[0] < 100  # the original cells are left as they were


def test_drop_edge_slivers_leaves_out_only_thin_red_cells_at_the_border():
    """Red cells cut by the border of which under 0.4 x the median red-cell side shows are left out (and
    counted in meta.edge_dropped); wider border cells, inner cells and other kinds at the border stay."""
    from bccdet.adapters.yolo import EDGE_SLIVER, drop_edge_slivers

    inner = [[100 + 110 * i, 200, 200 + 110 * i, 300] for i in range(4)]  # 100 px red cells, clear of the border
    boxes = inner + [
        [0, 50, 30, 150],      # rbc, 30 px shown across the left border: sliver (< 40)
        [0, 300, 60, 400],     # rbc, 60 px shown: kept
        [600, 0, 700, 25],     # rbc, 25 px across the top border: sliver
        [610, 455, 640, 480],  # rbc in the corner, 30 x 25: sliver
        [0, 420, 12, 470],     # wbc, 12 px at the border: kept (white cells are wanted whole or not)
        [300, 470, 315, 480],  # platelet at the border: kept
    ]
    kinds = ["rbc"] * 8 + ["wbc", "platelet"]
    cells = Cells(xyxy=np.array(boxes, np.float32), kind=kinds, meta=SmearMeta(width=640, height=480))
    out = drop_edge_slivers(cells)
    assert EDGE_SLIVER == 0.4 and len(out) == 7 and out.meta.edge_dropped == 3
    assert out.counts() == {"rbc": 5, "wbc": 1, "platelet": 1}
    assert [0, 300, 60, 400] in out.xyxy.tolist()
    assert len(drop_edge_slivers(cells, 0)) == 10 and drop_edge_slivers(cells, 0).meta.edge_dropped == 0
    assert len(drop_edge_slivers(cells[np.array(kinds) != "rbc"])) == 2  # nothing to measure: unchanged


def test_unpad_maps_cells_from_a_bordered_image_back_to_the_image():
    """Cells found in an image with a grey border (YoloDetector's ``border``) land in the image's own pixels:
    boxes shifted and clipped, mask crops cut at the image edge, a cell wholly in the border left out."""
    import cv2

    from bccdet.adapters.yolo import unpad

    pad, h, w = 10, 120, 160
    full = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    cv2.circle(full, (60, 70), 20, 1, -1)  # inside the image
    cv2.circle(full, (15, 40), 12, 1, -1)  # reaches 7 px into the border (x 3..27 -> -7..17)
    boxes = [[40, 50, 81, 91], [3, 28, 28, 53], [1, 100, 8, 110]]  # the last lies wholly in the border
    masks = [full[y0:y1, x0:x1].astype(bool) for x0, y0, x1, y1 in boxes]
    cells = Cells(xyxy=np.array(boxes, np.float32), kind=["wbc", "rbc", "platelet"], masks=masks,
                  meta=SmearMeta(width=w + 2 * pad, height=h + 2 * pad))
    meta = SmearMeta(path="x", width=w, height=h)
    out = unpad(cells, pad, meta)
    assert out.meta is meta and list(out.kind) == ["wbc", "rbc"]
    np.testing.assert_allclose(out.xyxy, [[30, 40, 71, 81], [0, 18, 18, 43]])
    for i in range(2):
        x0, y0 = out.mask_offset[i]
        mh, mw = out.masks[i].shape
        assert x0 >= 0 and y0 >= 0 and x0 + mw <= w and y0 + mh <= h
        truth = full[pad:pad + h, pad:pad + w].astype(bool) & Cells.full_mask(cells, i, full.shape)[pad:pad + h, pad:pad + w]
        assert np.array_equal(out.full_mask(i), truth)
