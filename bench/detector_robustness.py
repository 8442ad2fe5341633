"""The detector under colour, stain, focus and compression changes: recall per kind on BCCD test fields.

    .venv/bin/python -m bench.detector_robustness [--n 24] [--split test|val] [--detector NAME|FILE ...]

Each of the first ``--n`` BCCD test fields is changed (grey, hue rotated by +-30 / +60 / +90 degrees,
saturation x0.5 / x1.8, darker x0.6, Gaussian blur sigma 2 / 4, JPEG quality 30) and given to each
detector as ``analyze`` runs it; recall per kind = published boxes matched by a detection of that kind at
IoU 0.5. Other labs' stains, cameras and focus differ in these ways. Prints a table and the machine.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import BCCD_KIND, bccd_field, count_hits, need_dataset, bccd_stems, print_machine


def changes():
    import cv2

    def hue(deg):
        def f(img):
            h = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            h[..., 0] = (h[..., 0].astype(int) + int(round(deg / 2))) % 180
            return cv2.cvtColor(h, cv2.COLOR_HSV2RGB)
        return f

    def sat(k):
        def f(img):
            h = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
            h[..., 1] = np.clip(h[..., 1] * k, 0, 255)
            return cv2.cvtColor(h.astype(np.uint8), cv2.COLOR_HSV2RGB)
        return f

    def jpeg(img):
        _, e = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 30])
        return np.ascontiguousarray(cv2.imdecode(e, cv2.IMREAD_COLOR)[..., ::-1])

    return {
        "clean": lambda x: x,
        "grey": lambda x: np.repeat(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None], 3, 2),
        "hue +30": hue(30), "hue -30": hue(-30), "hue +60": hue(60), "hue +90": hue(90),
        "sat x0.5": sat(0.5), "sat x1.8": sat(1.8),
        "dark x0.6": lambda x: np.clip(x.astype(np.float32) * 0.6, 0, 255).astype(np.uint8),
        "blur 2": lambda x: cv2.GaussianBlur(x, (0, 0), 2), "blur 4": lambda x: cv2.GaussianBlur(x, (0, 0), 4),
        "jpeg 30": jpeg,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--split", default="test", help="BCCD's published split to take the fields from (val: to choose a model)")
    ap.add_argument("--detector", nargs="*", default=[None])
    a = ap.parse_args()

    from bccdet.adapters.yolo import YoloDetector
    from bccdet.types import SmearMeta
    from bccdet.weights import resolve

    b = need_dataset("bccd")
    fields = [bccd_field(b, st)[1:] for st in bccd_stems(b, a.split, a.n)]
    print_machine()
    print(f"first {len(fields)} BCCD {a.split} fields, recall RBC / WBC / platelets at IoU 0.5")
    names = []
    table = {}
    for d in a.detector:
        w, name, sha = resolve(d, "detector")
        det = YoloDetector(w, name=name, sha256=sha)
        names.append(name)
        for ch, fn in changes().items():
            hit = {k: [0, 0] for k in BCCD_KIND.values()}
            for img, gt in fields:
                im = np.ascontiguousarray(fn(img))
                count_hits(hit, det(im, SmearMeta(width=im.shape[1], height=im.shape[0])), gt)
            table[(ch, name)] = tuple(hit[k][0] / max(1, hit[k][1]) for k in ("rbc", "wbc", "platelet"))
    print(f"{'change':<11}" + "".join(f"{n[:30]:>32}" for n in names))
    for ch in changes():
        print(f"{ch:<11}" + "".join(f"{'%.2f / %.2f / %.2f' % table[(ch, n)]:>32}" for n in names), flush=True)


if __name__ == "__main__":
    main()
