"""bccdet: find, outline and type every cell in a peripheral blood smear.

``import bccdet`` is light: torch, ultralytics, fiftyone and ray are imported only inside the adapters
that need them.
"""

from .types import KINDS, Cells, CellsError, SmearMeta

__version__ = "0.1.0"
__all__ = ["Cells", "CellsError", "SmearMeta", "KINDS", "__version__"]
