"""Single-cell class-folder sources (PBC, DeepAPL, generic folders) -> ``ClsSample`` lists."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from ..io import InputError, image_files, image_size
from ..vocab import PBC_FOLDERS, cellavision_label, normalize_label, pbc_subclass
from .common import ClsSample, ConversionError, Report, file_hash, group_split, stratified_split


def _images(folder: Path) -> list[Path]:
    return image_files(folder)


def _readable(p: Path, report: Report) -> bool:
    try:
        image_size(p)
        return True
    except InputError as e:
        report.drop(p, f"unreadable image: {e}")
        return False


def dedup_labelled(samples: list[ClsSample], report: Report) -> list[ClsSample]:
    """Remove byte-identical files: one copy kept when labels agree, all copies dropped when they disagree."""
    by = defaultdict(list)
    for s in samples:
        if not s.content_hash:
            s.content_hash = file_hash(s.image)
        by[s.content_hash].append(s)
    kept = []
    for h, group in by.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        labels = sorted({g.label for g in group})
        if len(labels) > 1:
            for g in group:
                report.drop(g.image, f"duplicate with conflicting labels: same file labelled {labels}")
            continue
        group = sorted(group, key=lambda g: str(g.image))
        kept.append(group[0])
        for g in group[1:]:
            report.drop(g.image, f"duplicate: same bytes as {group[0].image}")
    return sorted(kept, key=lambda s: str(s.image))


def load_pbc(root: Path, report: Report, seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> list[ClsSample]:
    """PBC class folders (original JPG or the resized WebP copy); duplicates removed, stratified split."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(f"{root}: not a folder")
    samples = []
    folders = [d for d in sorted(root.iterdir()) if d.is_dir()]
    for d in folders:
        label = PBC_FOLDERS.get(d.name.lower())
        if label is None:
            report.drop(d, f"unknown class folder: {d.name!r} (expected {sorted(PBC_FOLDERS)})")
            continue
        for p in _images(d):
            if _readable(p, report):
                samples.append(ClsSample(image=p, label=label, split="", source="pbc", subclass=pbc_subclass(d.name, p.stem)))
    if not samples:
        raise ConversionError(f"{root}: no PBC class folders with images ({', '.join(sorted(PBC_FOLDERS))})")
    samples = dedup_labelled(samples, report)
    for s, sp in zip(samples, stratified_split(samples, key=lambda s: s.label, fractions=fractions, seed=seed)):
        s.split = sp
    return samples


def load_deepapl(root: Path, report: Report, seed: int = 0, fractions=(0.7, 0.15, 0.15), cohort: str = "Discovery") -> list[ClsSample]:
    """DeepAPL ``<Patient_ID>/<CellaVision class>/*``; split by patient, stratified by diagnosis."""
    root = Path(root)
    master = root / "master.csv"
    if not master.exists():
        raise ConversionError(f"{root}: missing master.csv (patient diagnoses)")
    diag = {}
    with open(master, newline="") as f:
        for row in csv.DictReader(f):
            if cohort and row.get("Cohort", cohort) != cohort:
                continue
            diag[row["Patient_ID"]] = row.get("Diagnosis", "")
    samples = []
    unknown = set()
    for pdir in sorted(d for d in root.iterdir() if d.is_dir()):
        if pdir.name not in diag:
            report.drop(pdir, f"patient not in master.csv ({cohort} cohort)")
            continue
        for cdir in sorted(d for d in pdir.iterdir() if d.is_dir()):
            try:
                mapped = cellavision_label(cdir.name)
            except KeyError:
                unknown.add(cdir.name)
                for p in _images(cdir):
                    report.drop(p, f"unknown CellaVision class: {cdir.name!r}")
                continue
            if mapped is None:
                for p in _images(cdir):
                    report.drop(p, f"not a single-cell class: {cdir.name!r}")
                continue
            label, sub = mapped
            for p in _images(cdir):
                if _readable(p, report):
                    samples.append(ClsSample(image=p, label=label, split="", source="deepapl", subclass=sub, group=pdir.name))
    if not samples:
        raise ConversionError(f"{root}: no patient folders with images")
    samples = dedup_labelled(samples, report)
    splits = group_split([s.group for s in samples], strata=diag, fractions=fractions, seed=seed)
    for s in samples:
        s.split = splits[s.group]
    per = defaultdict(set)
    for s in samples:
        per[s.split].add(s.group)
    for sp in ("train", "val", "test"):
        pats = sorted(per.get(sp, ()))
        n_apl = sum(diag[p] == "APL" for p in pats)
        report.notes.append(f"{sp}: {len(pats)} patients ({n_apl} APL, {len(pats) - n_apl} other)")
    return samples


def load_folder(root: Path, report: Report, seed: int = 0, fractions=(0.7, 0.15, 0.15), keep_names: bool = False) -> list[ClsSample]:
    """Generic class folders (``ROOT/<class>/*``, or ``ROOT/{train,val,test}/<class>/*`` keeping that split)."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(f"{root}: not a folder")
    pre_split = [d for d in ("train", "val", "test") if (root / d).is_dir()]
    tops = [(root / sp, sp) for sp in pre_split] if pre_split else [(root, "")]
    samples = []
    for top, sp in tops:
        for d in sorted(x for x in top.iterdir() if x.is_dir()):
            if keep_names:
                label = d.name
            else:
                try:
                    label = normalize_label(d.name)
                except KeyError:
                    for p in _images(d):
                        report.drop(p, f"unknown class folder: {d.name!r} (use --keep-names to keep it)")
                    continue
            for p in _images(d):
                if _readable(p, report):
                    samples.append(ClsSample(image=p, label=label, split=sp, source=root.name, subclass=d.name))
    if not samples:
        raise ConversionError(f"{root}: no class folders with images")
    samples = dedup_labelled(samples, report)
    if not pre_split:
        for s, sp in zip(samples, stratified_split(samples, key=lambda s: s.label, fractions=fractions, seed=seed)):
            s.split = sp
    return samples
