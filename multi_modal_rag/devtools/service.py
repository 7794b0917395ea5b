"""Run `mmrag serve` as a real process on a free port, for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """`with ServiceProcess(["--index", "papers"]) as service:` ... `service.url`; the output is in `service.log()`."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, port: int | None = None,
                 startup_timeout: float = 120.0, scheme: str = "http"):
        self.port = port or free_port()
        self.args = [sys.executable, "-m", "multi_modal_rag", "serve", "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._log = Path(tempfile.mkstemp(prefix="mmrag-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ServiceProcess":
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mmrag serve exited with {self.process.returncode}:\n{self.log()}")
            if self._listening():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mmrag serve did not start within {self.startup_timeout:.0f}s:\n{self.log()}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        if not self.url.startswith("http://"):
            return True
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self._log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
