"""Running the CLI in-process in tests: its JSON output, or its one-line error."""

from __future__ import annotations

import json
from typing import Any

from multi_modal_rag.cli import run


def json_out(capsys, argv: list[str]) -> Any:
    """The JSON `mmrag ARGV` printed, after checking it exited 0 (else the assertion shows its stderr)."""
    code = run(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)
