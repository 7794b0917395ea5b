"""`python -m multi_modal_rag` is `mmrag`."""

from .cli import main

main()
