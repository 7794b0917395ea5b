"""A migration in a process of its own that stops itself (SIGSTOP) at one step boundary, as a suspended VM or a
laptop lid would, for tests and benchmarks of what a stale run can still do when it is woken (SIGCONT).

    python -m multi_modal_rag.devtools.paused_run ALIAS MODEL STEP [NTH]

exits 0 after a swap, 3 when the run stopped with an error (printed on stderr, prefixed "STOPPED:").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ..connection import ConnectionSettings

RUN = [sys.executable, "-m", "multi_modal_rag.devtools.paused_run"]


def start(settings: ConnectionSettings, alias: str, model: str, step: str, nth: int = 1, *,
          lease_seconds: float, timeout: float = 600) -> subprocess.Popen:
    """Start the run and return once it has stopped itself at the `nth` time it reached `step`."""
    env = {**os.environ, "OPENSEARCH_URL": settings.url, "MMRAG_LEASE_SECONDS": str(lease_seconds), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([*RUN, alias, model, step, str(nth)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while _state_of(process.pid) != "T":
        if process.poll() is not None:
            raise RuntimeError(f"the run ended before its pause: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the run never reached {step} #{nth}")
        time.sleep(0.2)
    return process


def wake(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """SIGCONT; the exit code and everything it printed."""
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def _state_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "X"


def main(argv: list[str]) -> int:
    from .. import migration

    alias, model, pause_at = argv[:3]
    nth = int(argv[3]) if len(argv) > 3 else 1
    seen: list[str] = []

    def step(name: str) -> None:
        seen.append(name)
        if name == pause_at and seen.count(name) == nth:
            os.kill(os.getpid(), signal.SIGSTOP)

    try:
        migration.Migrator(alias, model, settings=ConnectionSettings.from_env(), page_size=8, on_step=step).run()
    except Exception as exc:  # noqa: BLE001 -- what the stale run met is the point
        print(f"STOPPED: {exc}", file=sys.stderr)
        return 3
    print("SWAPPED")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
