"""The FiftyOne App (``launch``, ``wait_http``) and installing plugins/bccdet, whose operators call this package."""

from __future__ import annotations

import time
from pathlib import Path

from .common import CurationError, _fo


# ---------------------------------------------------------------------- App
def launch(dataset, port: int = 5151, address: str = "127.0.0.1", remote: bool = True):
    """Serve the FiftyOne App for ``dataset`` on http://ADDRESS:PORT/ (returns the Session)."""
    fo = _fo()
    return fo.launch_app(dataset, port=port, address=address, remote=remote, auto=False)


def wait_http(url: str, timeout: float = 60.0) -> int:
    """GET ``url`` until it answers (returns the HTTP status) or ``timeout`` seconds pass (raises)."""
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (urllib.error.URLError, OSError) as e:
            last = e
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s ({last})")


# ---------------------------------------------------------------------- plugin install
def plugin_source() -> Path:
    from ...data import REPO

    return REPO / "plugins" / "bccdet"


def install_plugin(plugins_dir: Path | None = None, copy: bool = False, overwrite: bool = False) -> Path:
    """Symlink (or copy) plugins/bccdet into FiftyOne's plugins directory; returns the installed path."""
    import shutil

    src = plugin_source()
    if not (src / "fiftyone.yml").is_file():
        raise CurationError(f"{src}: plugin sources missing")
    if plugins_dir is None:
        plugins_dir = Path(_fo().config.plugins_dir)
    dst = Path(plugins_dir) / "bccdet"
    if dst.exists() or dst.is_symlink():
        if dst.is_symlink() and dst.resolve() == src.resolve() and not copy:
            return dst
        if not overwrite:
            raise CurationError(f"{dst} exists: pass --overwrite to replace it")
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        else:
            shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        dst.symlink_to(src.resolve(), target_is_directory=True)
    return dst
