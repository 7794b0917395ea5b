"""Running the local OpenSearch 2.19.1 node: start, stop and status, one node per HTTP port.

`start_node` has `node_build` fetch and assemble the node folder the first time, then writes
an instance folder for the port and launches the node as a daemon:

    opensearch-2.19.1/instances/PORT/ one node per HTTP port: config/, data/, logs/, opensearch.pid

OpenSearch refuses to run as root: as root the JVM runs as the system user that
`node_build` hands the node folder to.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..paths import default_cache_dir
from .node_build import (
    LOG_TAIL_LINES,
    Account,
    NodeError,
    OnStep,
    assemble,
    download_artifacts,
    find_java_home,
    hand_over,
    node_env,
    node_home,
    service_account,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9200

CLUSTER_NAME = "mmrag-local"
PIDFILE_GRACE = 60.0  # seconds the JVM may take to write its pid file


@dataclass
class NodeStatus:
    """What answers on 127.0.0.1:PORT. `pid` is set only for a node this module started; `home` once assembled."""

    url: str
    running: bool
    version: str | None = None
    plugins: list[str] = field(default_factory=list)
    health: str | None = None
    pid: int | None = None
    home: Path | None = None


# ---- public API -----------------------------------------------------------------------------


def start_node(
    cache_dir: Path | None = None,
    port: int = DEFAULT_PORT,
    heap: str = "1g",
    on_step: OnStep | None = None,
    timeout: float = 180,
) -> NodeStatus:
    """Start (downloading and assembling it the first time) a node on 127.0.0.1:PORT; wait until it is healthy."""
    cache = _resolve(cache_dir)
    step = on_step or (lambda message: None)
    _check_heap(heap)
    with _lock(cache):
        instance = _instance_dir(cache, port)
        if _running_pid(instance) is not None:
            logger.info("our node on port %d is already running", port)
            _wait_until_ready(port, instance, time.monotonic() + timeout)
            return node_status(cache, port)
        java_home = find_java_home()
        _check_port_free(port)
        try:
            download_artifacts(cache / "artifacts", java_home, step)
            home = assemble(cache, java_home, step)
            _prepare_instance(home, instance, port)
            account = service_account()
            if account is not None:
                hand_over(home, account, step)
        except OSError as exc:
            raise NodeError(f"could not prepare the node in {cache}: {exc}") from exc
        step(f"starting node on 127.0.0.1:{port} (heap {heap})")
        _launch(home, instance, java_home, heap, account)
        _wait_until_ready(port, instance, time.monotonic() + timeout, on_failure=_stop_pid)
    status = node_status(cache, port)
    logger.info("node up: %s", status)
    return status


def stop_node(cache_dir: Path | None = None, port: int = DEFAULT_PORT, timeout: float = 60) -> bool:
    """Stop our node on PORT (SIGTERM, then SIGKILL after `timeout`); True if one was running."""
    instance = _instance_dir(_resolve(cache_dir), port)
    pid = _running_pid(instance)
    if pid is None:
        _pidfile(instance).unlink(missing_ok=True)
        return False
    _stop_pid(pid, timeout)
    _pidfile(instance).unlink(missing_ok=True)
    return True


def node_status(cache_dir: Path | None = None, port: int = DEFAULT_PORT) -> NodeStatus:
    """What answers on 127.0.0.1:PORT; never raises for a stopped node (running=False)."""
    cache = _resolve(cache_dir)
    home = node_home(cache)
    status = NodeStatus(
        url=_url(port),
        running=False,
        pid=_running_pid(_instance_dir(cache, port)),
        home=home if home.is_dir() else None,
    )
    root = _http_json(port, "/")
    if not isinstance(root, dict):
        return status
    status.running = True
    status.version = (root.get("version") or {}).get("number")
    plugins = _http_json(port, "/_cat/plugins?format=json") or []
    status.plugins = sorted({entry.get("component", "") for entry in plugins if isinstance(entry, dict)} - {""})
    status.health = (_http_json(port, "/_cluster/health") or {}).get("status")
    return status


# ---- paths and small helpers ------------------------------------------------------------------


def _resolve(cache_dir: Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()).expanduser().resolve()


def _instance_dir(cache: Path, port: int) -> Path:
    return node_home(cache) / "instances" / str(port)


def _pidfile(instance: Path) -> Path:
    return instance / "opensearch.pid"


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _check_heap(heap: str) -> None:
    if not re.fullmatch(r"\d+[kKmMgG]?", heap):
        raise NodeError(f"heap {heap!r} is not a JVM size such as 512m or 2g")


@contextmanager
def _lock(cache: Path) -> Iterator[None]:
    """One start at a time per cache dir (e.g. two test sessions starting together)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle = open(cache / ".node.lock", "w")
    except OSError as exc:
        raise NodeError(f"cannot use the cache dir {cache}: {exc}; choose another one with --cache-dir or MMRAG_CACHE_DIR") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never send 127.0.0.1 through $http_proxy


def _http_json(port: int, path: str, timeout: float = 2.0) -> Any:
    """GET a JSON answer from the node, or None when nothing (or no JSON) answers."""
    try:
        with _NO_PROXY.open(_url(port) + path, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


# Stack frames and the JVM's routine warnings would push the actual error out of a short tail.
NOISE = re.compile(r"^\s+(at |\.\.\. \d+ more)|^WARNING: |^warning: no-jdk distributions")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip() and not NOISE.match(line)][-lines:]


def _log_tail(instance: Path, cluster_name: str = CLUSTER_NAME) -> str:
    """The last lines (stack frames left out) of the launcher output and the node log, for error messages."""
    logs = instance / "logs"
    text = []
    for path in (logs / "startup.out", logs / f"{cluster_name}.log"):
        lines = _tail(path)
        if lines:
            text.append(f"--- last lines of {path} ---\n" + "\n".join(lines))
    return "\n".join(text) if text else f"(no log written under {logs})"


# ---- port -------------------------------------------------------------------------------------------


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node's own HTTP server does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            answer = _http_json(port, "/", timeout=0.5)
            occupant = f"another OpenSearch {answer['version'].get('number')} node answers there" if isinstance(answer, dict) and "version" in answer else exc.strerror
            raise NodeError(
                f"port {port} is already in use ({occupant}); stop what listens there "
                f"or start the node on another one with --port"
            ) from exc


# ---- one node per port ----------------------------------------------------------------------------------


def _prepare_instance(home: Path, instance: Path, port: int, yml: str | None = None) -> None:
    """Write instance/config (opensearch.yml, by default a single node's; jvm.options with absolute log paths)
    and make data/logs."""
    config = instance / "config"
    for folder in (config / "jvm.options.d", instance / "data", instance / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(home / "config" / "log4j2.properties", config / "log4j2.properties")
    jvm_options = (home / "config" / "jvm.options").read_text()
    jvm_options = jvm_options.replace("HeapDumpPath=data", f"HeapDumpPath={instance / 'data'}").replace("logs/", f"{instance / 'logs'}/")
    (config / "jvm.options").write_text(jvm_options)
    (config / "opensearch.yml").write_text(yml or _opensearch_yml(instance, port))


def _opensearch_yml(instance: Path, port: int) -> str:
    return f"""# Written by multi_modal_rag.devtools.local_node at every start: edits here are overwritten.
cluster.name: {CLUSTER_NAME}
node.name: {CLUSTER_NAME}-{port}
network.host: 127.0.0.1
http.port: {port}
discovery.type: single-node
path.data: {instance / 'data'}
path.logs: {instance / 'logs'}
# A development node on a nearly full disk should not turn its indices read-only.
cluster.routing.allocation.disk.threshold_enabled: false
"""


def _launch(home: Path, instance: Path, java_home: Path, heap: str, account: Account | None) -> None:
    """Run `bin/opensearch -d -p PIDFILE` (as the service user when root); it returns once the JVM is forked."""
    env = node_env(java_home)
    env.update(OPENSEARCH_PATH_CONF=str(instance / "config"), OPENSEARCH_JAVA_OPTS=f"-Xms{heap} -Xmx{heap}")
    as_user: dict[str, Any] = {}
    if account is not None:
        as_user = {"user": account.uid, "group": account.gid, "extra_groups": []}
    _pidfile(instance).unlink(missing_ok=True)
    startup_log = instance / "logs" / "startup.out"
    with open(startup_log, "wb") as output:  # a file, not a pipe: the daemon inherits it
        if account is not None:
            os.chown(startup_log, account.uid, account.gid)
        result = subprocess.run(
            [str(home / "bin" / "opensearch"), "-d", "-p", str(_pidfile(instance))],
            cwd=home,  # the launcher calls bin/opensearch-keystore by a relative path
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the node outlives this process and ignores its Ctrl-C
            timeout=120,
            **as_user,
        )
    if result.returncode != 0:
        raise NodeError(f"the OpenSearch launcher failed (exit {result.returncode}):\n{_log_tail(instance)}")


def _wait_until_ready(port: int, instance: Path, deadline: float, on_failure: Callable[[int, float], None] | None = None) -> None:
    """Poll _cluster/health until green (yellow is final on one node); raise NodeError with the log tail otherwise."""
    started = time.monotonic()
    seen_pid: int | None = None
    while time.monotonic() < deadline:
        pid = _running_pid(instance)
        if pid is not None:
            seen_pid = pid
        elif seen_pid is not None or time.monotonic() - started > PIDFILE_GRACE:
            raise NodeError(f"the OpenSearch node on port {port} exited during startup\n{_log_tail(instance)}")
        status = (_http_json(port, "/_cluster/health") or {}).get("status")
        if status == "yellow":
            logger.warning("cluster health is yellow: some index asks for replicas, which a single node cannot hold")
        if status in ("green", "yellow"):
            return
        time.sleep(1.0)
    stopped = ""
    if seen_pid is not None and on_failure is not None:
        on_failure(seen_pid, 30)
        stopped = " and was stopped"
    raise NodeError(f"the OpenSearch node on port {port} was not healthy within {deadline - started:.0f}s{stopped}\n{_log_tail(instance)}")


# ---- processes ---------------------------------------------------------------------------------------------


def _running_pid(instance: Path) -> int | None:
    """The pid in the instance's pid file if that process is alive and is OpenSearch (not a reused pid)."""
    try:
        pid = int(_pidfile(instance).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_opensearch(pid) else None


def _is_opensearch(pid: int) -> bool:
    """Running OpenSearch's main class (a reused pid, or a zombie, has another or an empty command line)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"org.opensearch.bootstrap.OpenSearch" in cmdline


def _alive(pid: int) -> bool:
    """Whether any thread of the process still runs. The JVM's main thread ends first during shutdown,
    which empties /proc/PID/cmdline while other threads still flush data and hold the ports."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for thread in threads:
        try:
            state = Path(f"/proc/{pid}/task/{thread}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):  # zombie or dead
            return True
    return False


def _stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL."""
    logger.info("stopping OpenSearch pid %d", pid)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            raise NodeError(f"not allowed to stop OpenSearch pid {pid}: it runs as another user; retry as root or as that user") from exc
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)
        if sig == signal.SIGTERM:
            logger.warning("OpenSearch pid %d ignored SIGTERM for %.0fs: killing it", pid, timeout)
    raise NodeError(f"could not stop OpenSearch (pid {pid})")
