"""Where the development data sets live: ``$BCCDET_DATA`` or ``../shared/datasets`` (never in git)."""

from __future__ import annotations

import os
from pathlib import Path

from .io import InputError, sha256_file

REPO = Path(__file__).resolve().parent.parent

# The sample smear of the README's main command: the first image of BCCD's published test split.
SAMPLE = {
    "name": "BloodImage_00007.jpg",
    "relpath": "bccd/JPEGImages/BloodImage_00007.jpg",
    "url": "https://raw.githubusercontent.com/Shenggan/BCCD_Dataset/master/BCCD/JPEGImages/BloodImage_00007.jpg",
    "sha256": "9bbeb1779f6c06d624ad5303749513a2d7567d6a142aa67306964c4122edb309",
}


def data_root(required: bool = False) -> Path | None:
    """The folder holding bccd/, txl-pbc/, pbc/, ... or None (``required`` raises a clear error)."""
    cands = []
    if os.environ.get("BCCDET_DATA"):
        cands.append(Path(os.environ["BCCDET_DATA"]))
    cands += [Path.cwd() / ".." / "shared" / "datasets", REPO.parent / "shared" / "datasets"]
    for c in cands:
        if c.is_dir():
            return c.resolve()
    if required:
        raise InputError("no data folder: set BCCDET_DATA or place the data sets in ../shared/datasets")
    return None


def dataset(name: str) -> Path | None:
    root = data_root()
    if root is None or not (root / name).is_dir():
        return None
    return root / name


def cache_dir() -> Path:
    d = Path(os.environ.get("BCCDET_CACHE", Path.home() / ".cache" / "bccdet"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def download(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically and check its sha256 (raises InputError on mismatch)."""
    import urllib.request

    from .io import write_bytes_atomic

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except Exception as e:  # offline, DNS, HTTP errors
        raise InputError(f"cannot download {url}: {e}") from None
    import hashlib

    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise InputError(f"{url}: sha256 mismatch (expected {sha256[:12]}..., got {got[:12]}...)")
    write_bytes_atomic(dest, data)
    return dest


def sample_image() -> Path:
    """The README sample smear: from the local data folder (offline) or downloaded with its sha256."""
    local = dataset("bccd")
    if local is not None and (local.parent / SAMPLE["relpath"]).exists():
        return local.parent / SAMPLE["relpath"]
    dest = cache_dir() / SAMPLE["name"]
    if dest.exists() and sha256_file(dest) == SAMPLE["sha256"]:
        return dest
    return download(SAMPLE["url"], dest, SAMPLE["sha256"])
