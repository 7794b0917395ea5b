#!/usr/bin/env python
"""Thin wrapper: the same as `mmrag search ...` (see `mmrag search --help`)."""

import sys

from multi_modal_rag.cli import run

if __name__ == "__main__":
    sys.exit(run(["search", *sys.argv[1:]]))
