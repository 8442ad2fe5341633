"""bccdet's FiftyOne plugin: four operators over the App's current view / selection.

* ``@bccdet/bccdet/run_detector``: run the bccdet detector on the target samples -> ``predictions`` (boxes,
  masks, scores) and the detector-backbone embedding ``bccdet_embedding``;
* ``@bccdet/bccdet/classify_cells``: the leukocyte classifier on single-cell samples (``bccdet_cell_type``
  classification) or on the WBC detections of a field (``cell_type``, ``cell_type_score``, ``review``);
* ``@bccdet/bccdet/find_label_mistakes``: ``evaluate_detections``, fiftyone.brain mistakenness / hardness /
  uniqueness and bccdet's tagging rule (``possible_missing``, ``possible_spurious``, ...), optional CSV;
* ``@bccdet/bccdet/export_yolo``: the target samples' labels (corrected by the review tags ``accept`` /
  ``reject`` / ``exclude``, or as they are) to bccdet's YOLO layout, optionally with COCO JSON.

Install: ``bccdet install-plugin`` (symlinks this folder into ``fo.config.plugins_dir``; docs/curation.md).
The operators import ``bccdet``: install the package in FiftyOne's environment, or install the plugin as a
symlink so that the repository it points into is found.
"""

import os
import sys
from pathlib import Path

import fiftyone.operators as foo
import fiftyone.operators.types as types


def _bccdet():
    try:
        import bccdet  # noqa: F401
    except ImportError:
        for cand in (os.environ.get("BCCDET_REPO"), Path(__file__).resolve().parents[2]):
            if cand and (Path(cand) / "bccdet" / "__init__.py").is_file():
                sys.path.insert(0, str(cand))
                break
    from bccdet.adapters import fiftyone as bf

    return bf


class _Operator(foo.Operator):
    """An operator over the App's current view / selection: ``NAME``, ``LABEL`` (the menu entry and form
    title), ``DESCRIPTION``, ``ACTION`` (what the target picker says) and the form's own fields
    (``add_inputs``)."""

    NAME = LABEL = DESCRIPTION = ACTION = ""

    @property
    def config(self):
        return foo.OperatorConfig(name=self.NAME, label=self.LABEL, description=self.DESCRIPTION, dynamic=False)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description=self.ACTION, allow_selected_samples=True)
        self.add_inputs(inputs)
        return types.Property(inputs, view=types.View(label=self.LABEL))

    def add_inputs(self, inputs):
        pass


class RunDetector(_Operator):
    NAME, LABEL, ACTION = "run_detector", "bccdet: run the detector", "Run the detector on"
    DESCRIPTION = "Detect and outline every cell of the target samples with bccdet"

    def add_inputs(self, inputs):
        inputs.str("detector", label="Detector", description="Registered name or .pt file (empty: the default)")
        inputs.str("pred_field", label="Predictions field", default="predictions")
        inputs.float("conf", label="Confidence threshold", default=0.25)
        inputs.str("device", label="Device", default="cpu")

    def execute(self, ctx):
        bf = _bccdet()
        from bccdet.pipeline import load_detector  # built as analyze builds it

        view = ctx.target_view()
        det = load_detector(ctx.params.get("detector") or None, device=ctx.params.get("device") or "cpu",
                            conf=float(ctx.params.get("conf", 0.25)), runtime=bf.EMBED_RUNTIME)
        n = bf.predict_detections(view, det, field_name=ctx.params.get("pred_field") or "predictions")
        ctx.trigger("reload_dataset")
        return {"predicted": n, "detector": det.name}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("predicted", label="Samples predicted")
        outputs.str("detector", label="Detector")
        return types.Property(outputs)


class ClassifyCells(_Operator):
    NAME, LABEL, ACTION = "classify_cells", "bccdet: type the white cells", "Type the cells of"
    DESCRIPTION = "Run bccdet's leukocyte classifier on single-cell samples or on the WBC detections of a field"

    def add_inputs(self, inputs):
        inputs.str("classifier", label="Classifier", description="Registered name or .pt file (empty: the default)")
        inputs.str("det_field", label="Detections field",
                   description="Type the WBC detections of this field (e.g. predictions); empty: each sample is one cell")
        inputs.str("field", label="Classification field (single-cell samples)", default="bccdet_cell_type")
        inputs.str("device", label="Device", default="cpu")

    def execute(self, ctx):
        bf = _bccdet()
        view = ctx.target_view()
        det_field = ctx.params.get("det_field") or None
        if det_field and det_field not in view.get_field_schema():
            raise ValueError(f"no field {det_field!r} on this dataset")
        clf = bf.load_classifier(ctx.params.get("classifier") or None, device=ctx.params.get("device") or "cpu")
        n = bf.classify_samples(view, clf, field_name=ctx.params.get("field") or bf.CELL_TYPE_FIELD, det_field=det_field)
        ctx.trigger("reload_dataset")
        return {"typed": n, "classifier": clf.name}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("typed", label="Cells typed")
        outputs.str("classifier", label="Classifier")
        return types.Property(outputs)

class FindLabelMistakes(_Operator):
    NAME, LABEL, ACTION = "find_label_mistakes", "bccdet: find label mistakes", "Look for label mistakes in"
    DESCRIPTION = "Evaluate, run fiftyone.brain mistakenness/hardness/uniqueness and tag suspected label errors"

    def add_inputs(self, inputs):
        inputs.float("missing_conf", label="Possible-missing confidence", default=0.5)
        inputs.float("iou", label="Match IoU", default=0.5)
        inputs.bool("brain", label="Run fiftyone.brain", default=True)
        inputs.str("csv", label="Ranked CSV (optional path)")

    def execute(self, ctx):
        bf = _bccdet()
        view = ctx.target_view().exists(bf.PRED_FIELD)
        if not len(view):
            raise ValueError("no target sample has predictions: run @bccdet/bccdet/run_detector first")
        rule = bf.Rule(iou=float(ctx.params.get("iou", 0.5)), missing_conf=float(ctx.params.get("missing_conf", 0.5)))
        ev = bf.evaluate(view)
        if ctx.params.get("brain", True):
            bf.brain_detection(view, log=lambda m: None)
        suspects = bf.tag_detection_suspects(view, rule)
        if ctx.params.get("csv"):
            bf.write_suspects_csv(suspects, Path(ctx.params["csv"]))
        ctx.trigger("reload_dataset")
        counts = bf.suspect_counts(suspects)
        return {"suspects": len(suspects), "possible_missing": counts.get(bf.TAG_MISSING, 0),
                "possible_spurious": counts.get(bf.TAG_SPURIOUS, 0), "tp": ev["tp"], "fp": ev["fp"], "fn": ev["fn"]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        for k in ("suspects", "possible_missing", "possible_spurious", "tp", "fp", "fn"):
            outputs.int(k, label=k.replace("_", " "))
        return types.Property(outputs)


class ExportYolo(_Operator):
    NAME, LABEL, ACTION = "export_yolo", "bccdet: export to YOLO", "Export"
    DESCRIPTION = "Write the target samples' (corrected) labels in bccdet's YOLO layout (and COCO)"

    def add_inputs(self, inputs):
        inputs.str("out", label="Output folder", required=True)
        inputs.enum("task", ["segment", "detect"], label="YOLO task", default="segment")
        inputs.bool("corrected", label="Apply review tags (accept / reject / exclude)", default=True)
        inputs.bool("coco", label="Also write COCO JSON", default=False)
        inputs.bool("overwrite", label="Replace a non-empty output folder", default=False)

    def execute(self, ctx):
        bf = _bccdet()
        formats = ["yolo", "coco"] if ctx.params.get("coco") else ["yolo"]
        return bf.export_labels(ctx.target_view(), Path(ctx.params["out"]), formats=formats,
                                task=ctx.params.get("task") or "segment", corrected=bool(ctx.params.get("corrected", True)),
                                overwrite=bool(ctx.params.get("overwrite", False)))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("out", label="Folder")
        outputs.int("images", label="Images")
        outputs.int("objects", label="Objects")
        return types.Property(outputs)


def register(p):
    p.register(RunDetector)
    p.register(ClassifyCells)
    p.register(FindLabelMistakes)
    p.register(ExportYolo)
