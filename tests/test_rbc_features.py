"""Red-cell shape features, the morphology crop geometry and Chula's point matching, on synthetic fields
(numpy + cv2 only; no model)."""

import math

import cv2
import numpy as np

from bccdet.convert.chula import match_points, split_fields, with_point_boxes
from bccdet.morphology import FEATURES, rbc_crops
from bccdet.types import Cells, SmearMeta


def _field(cells_spec, h=240, w=320):
    """A pink background with red cells drawn as ellipses ((cx, cy, ax, ay, pallor)) and their masks."""
    img = np.full((h, w, 3), (232, 214, 220), np.uint8)
    boxes, masks = [], []
    for cx, cy, ax, ay, pallor in cells_spec:
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
        img[m.astype(bool)] = (200, 110, 125)
        if pallor:
            c = np.zeros((h, w), np.uint8)
            cv2.ellipse(c, (cx, cy), (int(ax * pallor), int(ay * pallor)), 0, 0, 360, 1, -1)
            img[c.astype(bool)] = (225, 190, 200)
        boxes.append([cx - ax, cy - ay, cx + ax + 1, cy + ay + 1])
        masks.append(m.astype(bool))
    full = np.stack(masks)
    return img, Cells.from_full_masks(np.array(boxes, np.float32), ["rbc"] * len(boxes), full,
                                      meta=SmearMeta(width=w, height=h))


def test_features_measure_size_against_the_field_elongation_and_central_pallor():
    spec = [(40, 40, 15, 15, 0.4), (100, 40, 15, 15, 0.4), (160, 40, 15, 15, 0.4), (220, 40, 15, 15, 0.4),  # normal
            (60, 120, 22, 22, 0.4),  # large: ~2x the area
            (140, 120, 10, 10, 0.4),  # small
            (220, 120, 21, 10, 0.0),  # elongated, no pallor
            (60, 190, 15, 15, 0.0)]  # round, no pallor
    img, cells = _field(spec)
    crops, f, idx = rbc_crops(img, cells)
    assert f.shape == (8, len(FEATURES)) and list(idx) == list(range(8))
    rel = np.exp(f[:, FEATURES.index("log_rel_area")])
    assert abs(rel[0] - 1.0) < 0.08 and 1.9 < rel[4] < 2.4 and 0.35 < rel[5] < 0.55
    el = np.exp(f[:, FEATURES.index("log_elongation")])
    assert el[0] < 1.1 and 1.9 < el[6] < 2.3
    pal = f[:, FEATURES.index("pallor")]
    assert pal[0] > 0.3 and abs(pal[7]) < 0.05  # a light centre against a uniformly stained cell
    sol = f[:, FEATURES.index("solidity")]
    assert (sol > 0.9).all() and (sol < 1.0).any()  # the outline's own area, not clipped at 1 by pixel counts
    # the window is the field's median red cell x1.5 for every cell: a large cell fills more of its crop
    assert crops.shape == (8, 48, 48, 4)
    fill = (crops[..., 3] > 127).mean(axis=(1, 2))
    assert fill[4] > 1.8 * fill[0] and fill[5] < 0.6 * fill[0]
    assert crops[0, 24, 24, 3] == 255 and crops[0, 0, 0, 3] == 0  # centred on its cell


def test_features_of_a_high_resolution_field_are_measured_on_the_window_shrunk(monkeypatch):
    """A 12 MP camera's red cells (windows over FEATURE_MAX_SIDE px) are measured on the window shrunk: the
    features of the full-resolution window within a little (the field at 1/6 of the size differs more)."""
    import bccdet.morphology as M

    spec = [(40, 40, 15, 15, 0.4), (100, 40, 15, 15, 0.4), (160, 40, 15, 15, 0.4), (60, 120, 22, 22, 0.4),
            (220, 120, 21, 10, 0.0)]
    k = 6
    big, cells = _field([(x * k, y * k, a * k, b * k, p) for x, y, a, b, p in spec], h=240 * k, w=320 * k)
    assert 1.5 * 2 * 15 * k > M.FEATURE_MAX_SIDE  # the windows of this field are shrunk
    crops, shrunk, _ = rbc_crops(big, cells)
    monkeypatch.setattr(M, "FEATURE_MAX_SIDE", 10 ** 6)
    crops_full, full, _ = rbc_crops(big, cells)
    # the network's crops: cut from the shrunk window, within a grey level or two of the direct resize
    assert np.abs(crops.astype(int) - crops_full).max() <= 3
    for name, tol in (("log_rel_area", 0.01), ("log_elongation", 0.01), ("solidity", 0.01), ("circularity", 0.03),
                      ("pallor", 0.04), ("log_rel_density", 0.01)):
        i = FEATURES.index(name)
        np.testing.assert_allclose(shrunk[:, i], full[:, i], atol=tol, err_msg=name)


def test_size_is_judged_against_microns_when_the_scale_is_known():
    img, cells = _field([(40, 40, 15, 15, 0.4), (100, 40, 15, 15, 0.4), (160, 40, 15, 15, 0.4)])
    # 31 px across at 0.5 um/px = 15.5 um: twice a normal 7.5 um red cell across, ~4x its area
    f = rbc_crops(img, cells.with_meta(mpp=0.5))[1]
    rel = math.exp(float(f[0, FEATURES.index("log_rel_area")]))
    assert 3.5 < rel < 4.8, rel


def test_points_pair_with_the_red_cell_holding_them_one_point_a_cell():
    img, cells = _field([(40, 40, 15, 15, 0.4), (100, 40, 15, 15, 0.4)])
    pts = np.array([[40, 40, 0], [42, 41, 3], [100, 44, 4], [250, 200, 0], [54, 26, 0]], float)
    own = match_points(cells, pts)
    # the second point on cell 0 is farther from its centre than the first: left unpaired; the last lies in
    # cell 0's box corner but outside its mask
    assert own.tolist() == [0, -1, 1, -1, -1]
    both, own2 = with_point_boxes(cells, pts, own)
    assert len(both) == 5 and own2.tolist()[:1] == [0] and (own2 >= 0).all()
    x1, y1, x2, y2 = both.xyxy[own2[3]]
    assert abs((x1 + x2) / 2 - 250) < 1 and abs((x2 - x1) - 31) < 3  # the field's median red-cell size


def test_split_by_field_is_disjoint_and_seeded():
    stems = [str(i) for i in range(1, 101)]
    a, b = split_fields(stems, 0), split_fields(stems, 0)
    assert a == b and sorted(a) == sorted(stems)
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 15, "test": 15}
    assert split_fields(stems, 1) != a


def test_size_rule_keeps_macro_and_microcyte_to_cells_larger_or_smaller_than_the_field():
    from bccdet.adapters.morphology import size_rule
    from bccdet.vocab import RBC_MORPHOLOGY

    k = len(RBC_MORPHOLOGY)
    p = np.full((3, k), 0.01)
    p[:, RBC_MORPHOLOGY.index("macrocyte")] = 0.6
    p[2, RBC_MORPHOLOGY.index("microcyte")] = 0.7
    p[:, RBC_MORPHOLOGY.index("normal")] = 0.3
    p /= p.sum(1, keepdims=True)
    f = np.zeros((3, len(FEATURES)), np.float32)
    f[:, FEATURES.index("log_rel_area")] = np.log([1.3, 0.9, 0.8])
    q = size_rule(p, f, RBC_MORPHOLOGY)
    assert np.allclose(q.sum(1), 1.0)
    top = [RBC_MORPHOLOGY[i] for i in q.argmax(1)]
    # larger than the field: stays a macrocyte; smaller: macrocyte ruled out; a small cell may be a microcyte
    assert top == ["macrocyte", "normal", "microcyte"]
    assert q[1, RBC_MORPHOLOGY.index("macrocyte")] == 0 and q[0, RBC_MORPHOLOGY.index("microcyte")] == 0
