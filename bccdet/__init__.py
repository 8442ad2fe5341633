"""bccdet: find, outline and type every cell in a peripheral blood smear.

    import bccdet
    rep = bccdet.analyze("smear.jpg")            # default models; a SmearReport
    rep.summary["counts"], rep.cells, rep.write("out/smear")
    pipe = bccdet.load_pipeline(refine=False)    # load once, analyse many
    rows = bccdet.classify_cells("export/")      # single-cell images (CellaVision)

``import bccdet`` is light: torch, ultralytics, fiftyone and ray are imported only inside the adapters
that need them, when a pipeline is loaded (docs/api.md).
"""

from .classify import classify_cells
from .pipeline import Pipeline, PipelineSpec, SmearReport, analyze, load_pipeline
from .types import KINDS, Cells, CellsError, SmearMeta
from .version import __version__
__all__ = ["Cells", "CellsError", "SmearMeta", "KINDS", "__version__", "analyze", "load_pipeline", "classify_cells",
           "Pipeline", "PipelineSpec", "SmearReport"]
