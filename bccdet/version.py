"""The package version (a core module: batch manifests record it)."""

__version__ = "0.1.0"
