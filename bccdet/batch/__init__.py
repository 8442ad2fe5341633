"""Batch slide processing: ``analyze`` at scale, resumable, parallel, whole-slide aware (docs/batch.md).

The engine behind ``bccdet batch``. Imports no ML framework at module level: the models are loaded once
per worker (in this process, in a process pool, or in Ray actors).

How it works
------------
1. **Plan** (parent process): every INPUT (folder, glob, CSV list, image, whole-slide scan) becomes one or
   more *slides*; every file is hashed (sha256) and its header read; bad files, duplicates (same content
   anywhere earlier in the batch) and mixed folders are recorded with a reason.
2. **Run**: the work units (one per field, one per row of tiles of a whole-slide scan, one per single-cell
   export) go to the workers; each unit's outputs appear atomically (``atomic_dir`` / ``write_text_atomic``),
   then the unit is recorded in ``OUT/.state/<slide>.json`` (atomic), then the progress bar moves.
3. **Summarize**: when a slide's units are all recorded, ``OUT/<slide>/slide.json`` is written (atomic) from
   the recorded counts; at the end ``slides.csv``, ``slides.parquet`` and ``summary.html``.

``OUT/manifest.json`` (one record per slide; atomic) is rewritten after planning, when a slide finishes, at
most every few seconds while fields finish, and at the end. A kill at any moment leaves every output either
complete or absent (hidden ``.*.partial-*`` leftovers are removed on the next run); ``--resume`` re-plans,
keeps every unit whose state record matches the input's content hash and whose outputs exist, and redoes
the rest. Timings are kept in the manifest only, so the outputs of an interrupted-then-resumed batch equal
those of an uninterrupted one.

The modules, each importing only those above it:

    common.py     OUT's file names, a unit record's keys, small helpers (_now, _abspath, _reason, ...), is_wsi
    plan.py       INPUTs -> slides (expand_slides), field records, plan_batch, a slide's units to run
    worker.py     Worker: the models loaded once; its units (a field, a row of tiles, a single-cell export)
    executors.py  in this process, a process pool, Ray actors
    resume.py     the options and resume rules: what a batch runs with (resolve_options)
    aggregate.py  a slide's slide.json (finish_slide), slides.csv / slides.parquet / summary.html
    engine.py     Batch (the run loop, manifest, state records, progress bar), run_batch

Every function, class and constant of the former single module ``batch.py`` (and the bccdet names it
imported) is re-exported here, with ``expand_inputs`` renamed ``expand_slides``. Patching a name here
(``monkeypatch.setattr(B, ...)``) reaches only code that looks it up through the package: patch the
submodule that uses it (e.g. ``engine._classifier_available``). Classes are shared objects, so patching
an attribute of ``B.Worker`` reaches every worker.
"""

from __future__ import annotations

# names the single module imported, kept for code that used them from here
from ..defaults import TILE, TILE_OVERLAP
from ..io import (IMAGE_SUFFIXES, InputError, array_to_rgb8, atomic_dir, image_size, public_mode, sha256_file,
                  write_bytes_atomic, write_text_atomic)
from ..runtime import check_review_threshold
from ..vocab import is_class_folder
from .aggregate import (_isna, _overview_jpg, _plot_png, _unfamiliar_of, slide_rows, summarize_totals, summary_html,
                        write_aggregates)
from .common import (AGGREGATES, BANDS_DIR, CROP_MAX_SIDE, FORMAT, LOCK_FILE, MANIFEST, MANIFEST_EVERY_S,
                     RBC_MORPHOLOGY_KEY, RBC_SCORE_KEY, RESERVED_IN_SLIDE, RESERVED_TOP, STATE_DIR, WBC_LABELS_KEY,
                     WBC_UNFAMILIAR_KEY, WSI_MIN_PIXELS, WSI_SUFFIXES, Log, _abspath, _add_counts, _add_morph, _json,
                     _load_json, _now, _reason, _sanitize, _short, _unique, _version, is_wsi)
from .engine import Batch, _classifier_available, _lock, clean_leftovers, complete_field_dirs, output_snapshot, run_batch
from .executors import (InProcessExecutor, PoolExecutor, RayExecutor, _failed_future, _pool_init, _pool_run,
                        _RayActor)
from .plan import (IMAGE_KINDS, _decide_kind, _expand, _expand_csv, _expand_dir, _failed_spec, _field_records, _key,
                   _spec, _wsi_info, expand_slides, plan_batch)
from .resume import _diff
from .worker import Worker, _strip_path
