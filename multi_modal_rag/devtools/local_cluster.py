"""A local OpenSearch cluster of several nodes on this machine: replicas, cluster-manager election and node loss.

    mmrag node start --nodes 3 --port 9200     nodes on HTTP ports 9200-9202, transport ports 9300-9302

Each node is a process of the same node folder that `local_node` runs, with its own instance folder
(`instances/cluster-FIRSTPORT/PORT`: config, data, logs, pid file) and a small heap, so three fit beside a
single node on a 2-core, 24 GB machine. The nodes find each other through their transport ports and elect a
cluster manager among themselves the first time (`cluster.initial_cluster_manager_nodes`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .local_node import (
    PIDFILE_GRACE,
    NodeStatus,
    _alive,
    _check_heap,
    _check_port_free,
    _http_json,
    _launch,
    _lock,
    _log_tail,
    _prepare_instance,
    _resolve,
    _running_pid,
    _stop_pid,
    node_status,
)
from .node_build import NodeError, OnStep, assemble, download_artifacts, find_java_home, hand_over, node_home, service_account

logger = logging.getLogger(__name__)

CLUSTER_HEAP = "512m"
TRANSPORT_OFFSET = 100  # a node's transport port is its HTTP port + 100 (9200 -> 9300)


@dataclass
class ClusterStatus:
    """The cluster's nodes (one NodeStatus per HTTP port) and the health the cluster reports."""

    name: str
    nodes: list[NodeStatus] = field(default_factory=list)
    health: str | None = None
    number_of_nodes: int = 0

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated, as OPENSEARCH_URL takes them."""
        return ",".join(node.url for node in self.nodes)


def cluster_name(first_port: int) -> str:
    return f"mmrag-cluster-{first_port}"


def cluster_ports(first_port: int, nodes: int) -> list[int]:
    return [first_port + i for i in range(nodes)]


def member_dir(cache: Path, first_port: int, port: int) -> Path:
    return node_home(cache) / "instances" / f"cluster-{first_port}" / str(port)


def member_yml(instance: Path, first_port: int, nodes: int, port: int) -> str:
    ports = cluster_ports(first_port, nodes)
    seeds = ", ".join(f'"127.0.0.1:{p + TRANSPORT_OFFSET}"' for p in ports)
    managers = ", ".join(f'"{cluster_name(first_port)}-{p}"' for p in ports)
    return f"""# Written by multi_modal_rag.devtools.local_cluster at every start: edits here are overwritten.
cluster.name: {cluster_name(first_port)}
node.name: {cluster_name(first_port)}-{port}
network.host: 127.0.0.1
http.port: {port}
transport.port: {port + TRANSPORT_OFFSET}
discovery.seed_hosts: [{seeds}]
cluster.initial_cluster_manager_nodes: [{managers}]
path.data: {instance / 'data'}
path.logs: {instance / 'logs'}
cluster.routing.allocation.disk.threshold_enabled: false
"""


def _check_nodes(nodes: int) -> None:
    if not isinstance(nodes, int) or nodes < 2:
        raise NodeError(f"--nodes {nodes!r}: a cluster needs 2 nodes or more (3 keeps a cluster manager when one is lost)")


def start_cluster(
    cache_dir: Path | None = None,
    first_port: int = 9200,
    nodes: int = 3,
    heap: str = CLUSTER_HEAP,
    on_step: OnStep | None = None,
    timeout: float = 300,
) -> ClusterStatus:
    """Start the nodes that are not running (all of them the first time) and wait until the cluster has them all."""
    _check_nodes(nodes)
    _check_heap(heap)
    cache = _resolve(cache_dir)
    step = on_step or (lambda message: None)
    with _lock(cache):
        java_home = find_java_home()
        to_start = [p for p in cluster_ports(first_port, nodes) if _running_pid(member_dir(cache, first_port, p)) is None]
        for port in to_start:
            _check_port_free(port)
            _check_port_free(port + TRANSPORT_OFFSET)
        try:
            download_artifacts(cache / "artifacts", java_home, step)
            home = assemble(cache, java_home, step)
            account = service_account()
            for port in to_start:
                instance = member_dir(cache, first_port, port)
                _prepare_instance(home, instance, port, member_yml(instance, first_port, nodes, port))
            if account is not None:
                hand_over(home, account, step)
        except OSError as exc:
            raise NodeError(f"could not prepare the cluster in {cache}: {exc}") from exc
        for port in to_start:
            step(f"starting cluster node on 127.0.0.1:{port} (transport {port + TRANSPORT_OFFSET}, heap {heap})")
            _launch(home, member_dir(cache, first_port, port), java_home, heap, account)
        _wait_for_cluster(cache, first_port, nodes, time.monotonic() + timeout)
    return cluster_status(cache, first_port, nodes)


def _wait_for_cluster(cache: Path, first_port: int, nodes: int, deadline: float) -> None:
    """Until every node answers and the cluster counts them all; NodeError with the log tail of a node that died."""
    seen: set[int] = set()  # ports whose JVM was seen running: one that stops after that has died
    started = time.monotonic()
    while time.monotonic() < deadline:
        for port in cluster_ports(first_port, nodes):
            instance = member_dir(cache, first_port, port)
            if _running_pid(instance) is not None:
                seen.add(port)
            elif port in seen or time.monotonic() - started > PIDFILE_GRACE:
                raise NodeError(f"cluster node on port {port} exited during startup\n{_log_tail(instance, cluster_name(first_port))}")
        health = [_http_json(port, "/_cluster/health") for port in cluster_ports(first_port, nodes)]
        if all(isinstance(h, dict) and h.get("number_of_nodes") == nodes and h.get("status") in ("green", "yellow") for h in health):
            return
        time.sleep(1.0)
    tails = "\n".join(_log_tail(member_dir(cache, first_port, p), cluster_name(first_port)) for p in cluster_ports(first_port, nodes))
    raise NodeError(f"the {nodes}-node cluster on ports {first_port}-{first_port + nodes - 1} did not form in time\n{tails}")


def stop_cluster(cache_dir: Path | None = None, first_port: int = 9200, nodes: int = 3, timeout: float = 60) -> int:
    """Stop the cluster's running nodes (SIGTERM, then SIGKILL); how many were running."""
    _check_nodes(nodes)
    cache = _resolve(cache_dir)
    stopped = 0
    for port in cluster_ports(first_port, nodes):
        instance = member_dir(cache, first_port, port)
        pid = _running_pid(instance)
        if pid is not None:
            _stop_pid(pid, timeout)
            stopped += 1
        (instance / "opensearch.pid").unlink(missing_ok=True)
    return stopped


def kill_member(cache_dir: Path | None, first_port: int, port: int) -> int:
    """SIGKILL one node of the cluster, as a crash would; returns its pid. For node-loss tests."""
    instance = member_dir(_resolve(cache_dir), first_port, port)
    pid = _running_pid(instance)
    if pid is None:
        raise NodeError(f"no cluster node of ours runs on port {port}")
    _stop_pid_now(pid)
    return pid


def _stop_pid_now(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def cluster_status(cache_dir: Path | None = None, first_port: int = 9200, nodes: int = 3) -> ClusterStatus:
    """Each node's status and the cluster's health as the first node that answers reports it."""
    _check_nodes(nodes)
    cache = _resolve(cache_dir)
    status = ClusterStatus(name=cluster_name(first_port))
    for port in cluster_ports(first_port, nodes):
        node = node_status(cache, port)
        node.pid = _running_pid(member_dir(cache, first_port, port))
        status.nodes.append(node)
        if node.running and status.health is None:
            health = _http_json(port, "/_cluster/health") or {}
            status.health, status.number_of_nodes = health.get("status"), health.get("number_of_nodes", 0)
    return status


__all__ = ["CLUSTER_HEAP", "ClusterStatus", "cluster_ports", "cluster_status", "kill_member", "start_cluster", "stop_cluster"]
