"""Scripts that build a shipped artifact (run from the repository root as ``python -m tools.X``):

- ``tools.deepapl_cv``: DeepAPL patient-level cross-validation; ``fit-apl`` writes weights/bccdet-apl-lr.json;
- ``tools.classifier_familiarity``: ``--write`` writes weights/<classifier>.familiarity.npz;
- ``tools.sam_finetune``: ``--final`` writes the SAM decoder weights/bccdet-litemedsam-blood.pt.
"""
