"""The red-cell grade table of report.html, seen in a real browser (headless Chromium): the table renders
and a type graded 2+ is highlighted. Skips where Chromium is absent (.ci/run installs Debian's)."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from bccdet.report import rbc_gallery_crops, render_html, report_dict
from bccdet.types import Cells, SmearMeta

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")
def test_grade_table_renders_with_the_flagged_type_highlighted(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    boxes = [[(i % 10) * 30 + 2, (i // 10) * 30 + 2, (i % 10) * 30 + 26, (i // 10) * 30 + 26] for i in range(n)]
    types = ["normal"] * 50 + ["schistocyte"] * 3 + ["target_cell"] * 7  # 5 %: 3+; 11.7 %: 1+
    img = rng.integers(150, 230, (200, 320, 3), dtype=np.uint8)
    c = Cells(xyxy=boxes, kind=["rbc"] * n, masks=[np.ones((24, 24), bool)] * n, morphology=types,
              morphology_score=np.linspace(0.5, 0.99, n), meta=SmearMeta(path="field.png", width=320, height=200))
    rep = report_dict(c, {"detector": {"name": "t", "sha256": "0" * 64}})
    page = tmp_path / "report.html"
    page.write_text(render_html(rep, b"", [], c, rbc_gallery_crops(img, c)), encoding="utf-8")
    shot = tmp_path / "shot.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1000,2000",
                        f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    pink = (np.abs(a - [253, 232, 232]).sum(-1) <= 6)  # the background of a row graded 2+ (tr.flagged)
    rows = np.nonzero(pink.sum(1) > 100)[0]
    assert len(rows) >= 10, "no highlighted grade row in the rendered page"
    assert rows.max() - rows.min() < 40  # one row (schistocyte) highlighted, not target cells (1+)
    assert (np.abs(a - [255, 255, 255]).sum(-1) > 60).mean() > 0.02  # the page drew text and thumbnails
