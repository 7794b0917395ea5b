#!/usr/bin/env python
"""Thin wrapper: the same as `mmrag index ...` (see `mmrag index --help`)."""

import sys

from multi_modal_rag.cli import run

if __name__ == "__main__":
    sys.exit(run(["index", *sys.argv[1:]]))
