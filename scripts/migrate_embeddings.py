#!/usr/bin/env python
"""Thin wrapper: the same as `mmrag migrate ...` (see `mmrag migrate --help`)."""

import sys

from multi_modal_rag.cli import run

if __name__ == "__main__":
    sys.exit(run(["migrate", *sys.argv[1:]]))
