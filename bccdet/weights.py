"""Model registry: a name -> file + sha256 (+ download URL for users with internet)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .data import REPO, cache_dir, download
from .io import InputError, sha256_file

WEIGHTS_DIR = REPO / "weights"
REGISTRY_FILE = WEIGHTS_DIR / "registry.json"


class WeightsError(InputError):
    """A model's weights are missing or do not match their sha256."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str  # detector | classifier | sam
    file: str  # relative to weights/
    sha256: str
    url: str = ""
    card: str = ""
    default: bool = False


def registry() -> dict[str, ModelEntry]:
    if not REGISTRY_FILE.exists():
        return {}
    raw = json.loads(REGISTRY_FILE.read_text())
    return {m["name"]: ModelEntry(**m) for m in raw.get("models", [])}


def default_name(task: str) -> str | None:
    for m in registry().values():
        if m.task == task and m.default:
            return m.name
    return None


WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".onnx", ".safetensors", ".bin")


def resolve(name_or_path: str | None, task: str) -> tuple[Path, str, str]:
    """(file, name, sha256) for a registered name, a path, or the task's default; raises WeightsError."""
    if name_or_path and Path(name_or_path).is_file():
        p = Path(name_or_path)
        return p, p.stem, sha256_file(p)
    reg = registry()
    name = name_or_path or default_name(task)
    if name is None:
        raise WeightsError(
            f"no {task} weights yet: none is registered in weights/registry.json. "
            f"Train one (`bccdet train {task}`) or pass a weights file with --{task}"
        )
    if name not in reg:
        import difflib

        if Path(name).suffix.lower() in WEIGHT_SUFFIXES or "/" in name or os.sep in name:
            raise WeightsError(f"{name}: no such weights file")
        same_task = sorted(k for k, m in reg.items() if m.task == task)
        hint = difflib.get_close_matches(name, same_task, n=1)
        raise WeightsError(f"unknown {task} model {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; known: {same_task}"))
    m = reg[name]
    if m.task != task:
        raise WeightsError(f"{name!r} is a registered {m.task} model, not a {task}")
    for p in (WEIGHTS_DIR / m.file, cache_dir() / m.file):
        if p.is_file():
            got = sha256_file(p)
            if got != m.sha256:
                raise WeightsError(f"{p}: sha256 {got[:12]}... does not match the registry ({m.sha256[:12]}...)")
            return p, m.name, m.sha256
    if m.url:
        p = download(m.url, cache_dir() / m.file, m.sha256)
        return p, m.name, m.sha256
    raise WeightsError(f"{m.name}: weights file {m.file} is missing from weights/ and has no download URL")


def register(file: str | Path, name: str, task: str, card: str, default: bool = True, url: str = "") -> ModelEntry:
    """Add (or replace) a model in weights/registry.json; ``default`` makes it the task's default."""
    from .io import write_text_atomic

    p = Path(file)
    if not p.is_file() or p.resolve().parent != WEIGHTS_DIR.resolve():
        raise WeightsError(f"{p}: register files that sit in {WEIGHTS_DIR}")
    entry = ModelEntry(name=name, task=task, file=p.name, sha256=sha256_file(p), url=url, card=card, default=default)
    models = [m for m in registry().values() if m.name != name]
    if default:
        models = [ModelEntry(**{**m.__dict__, "default": False}) if m.task == task else m for m in models]
    models.append(entry)
    write_text_atomic(REGISTRY_FILE, json.dumps({"models": [m.__dict__ for m in sorted(models, key=lambda m: (m.task, m.name))]}, indent=2) + "\n")
    return entry
