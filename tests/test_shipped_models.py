"""The weights we ship: registered, loadable, and doing their job on a few real images."""

import numpy as np
import pytest

from bccdet.weights import default_name, resolve

pytestmark = [pytest.mark.data, pytest.mark.slow]


def test_shipped_detector_finds_the_wbc_in_bccd_test_fields(bccd):
    if default_name("detector") is None:
        pytest.fail("no default detector registered in weights/registry.json")
    from bccdet.adapters.yolo import YoloDetector
    from bccdet.io import read_image
    from bccdet.types import SmearMeta

    w, name, sha = resolve(None, "detector")
    det = YoloDetector(w, name=name, sha256=sha)
    stems = (bccd / "ImageSets/Main/test.txt").read_text().split()[:6]
    from xml.etree import ElementTree as ET

    hits = 0
    for s in stems:
        img = read_image(bccd / "JPEGImages" / f"{s}.jpg")
        cells = det(img, SmearMeta(path=s, width=img.shape[1], height=img.shape[0]))
        gt = [o for o in ET.parse(bccd / "Annotations" / f"{s}.xml").getroot().iter("object") if o.findtext("name") == "WBC"]
        assert gt, s
        b = gt[0].find("bndbox")
        g = np.array([float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        wbc = cells[cells.kind == "wbc"]
        ious = []
        for p in wbc.xyxy:
            ix = max(0.0, min(p[2], g[2]) - max(p[0], g[0]))
            iy = max(0.0, min(p[3], g[3]) - max(p[1], g[1]))
            inter = ix * iy
            ious.append(inter / ((p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter))
        hits += bool(ious) and max(ious) >= 0.5
        assert cells.counts()["rbc"] >= 5, s  # every BCCD field is full of red cells
        assert cells.has_masks and set(cells.mask_source) == {"yolo"}
    assert hits == len(stems), f"WBC found in {hits}/{len(stems)} fields"
