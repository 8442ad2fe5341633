"""Print the machine record every benchmark prints with its table (CPU, cores, RAM, Python, torch, GPU).

    .venv/bin/python -m bench.machine
"""

from __future__ import annotations

import argparse

from bench.common import machine

__all__ = ["machine"]


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(machine())


if __name__ == "__main__":
    main()
