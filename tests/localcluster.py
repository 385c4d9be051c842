"""A real two-node Ray cluster on 127.0.0.1 for tests: two ``ray start --block`` processes.

Each node is its own ``ray start --block`` process started in a new session,
so it and its Ray daemons (GCS, raylet, dashboard) share one process group;
losing a node (:meth:`LocalCluster.stop_node`) SIGKILLs that group and every
process the node spawned (Ray's workers start sessions of their own) at
once, as when its machine dies. ``ray stop`` is never used: it kills every
Ray on the machine, other tests' included. If the test process dies first,
each node gets SIGTERM (Linux's parent-death signal) and stops its Ray.

Authentication is explicit: Ray 2.60's ``ray start --head`` turns token
authentication on by itself when ``~/.ray/auth_token`` happens to exist, and a
client that attaches by address never does, so the outcome would depend on the
machine. The cluster gets its own token file and ``RAY_AUTH_MODE=token``;
clients (``geoseg run --address``, ``geoseg submit``) run with
:meth:`LocalCluster.env`, as they would against a cluster with token auth
(the default for every cluster from Ray 2.61).

Each node has its own temporary folder (short: Unix socket paths are limited
to about 107 characters) and its own free ports, so nothing clashes with
an embedded Ray, another test's cluster or a default ``ray start``; the head
writes ``ray_current_cluster`` into its own folder, so a plain ``ray.init()``
elsewhere on the machine still starts its own embedded Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LocalCluster", "Node", "free_port", "start_cluster"]

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Node:
    """One ``ray start --block`` process, its process group and the processes it spawned."""

    name: str
    process: subprocess.Popen
    temp_dir: Path
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def pids(self) -> set[int]:
        """Every live process of this node: its process group and everything the node spawned
        (Ray's worker processes start their own sessions, so the group alone misses them)."""
        import psutil

        pids = set()
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.info["pid"]) == self.process.pid:
                    pids.add(proc.info["pid"])
            except (ProcessLookupError, PermissionError):
                continue
        with contextlib.suppress(psutil.NoSuchProcess):
            pids.update(child.pid for child in psutil.Process(self.process.pid).children(recursive=True))
        return pids

    def kill(self) -> None:
        """SIGKILL the whole node at once, workers included, with no chance to clean up (a lost machine)."""
        doomed = self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


@dataclass
class LocalCluster:
    """A head node and a second node on 127.0.0.1."""

    port: int
    dashboard_port: int
    head: Node
    second: Node
    root: Path
    cpus: int = 2
    nodes: list[Node] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # Ray node id by name, as of the last wait
    _lost: set[str] = field(default_factory=set)
    _restarted: bool = False

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a client of this cluster: its token, no inherited RAY_ADDRESS."""
        return {**client_env(self.root), **extra}

    @property
    def address(self) -> str:
        """What ``ray.init`` / ``geoseg run --address`` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        """What the Jobs API (``geoseg submit --address``) takes."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def alive_nodes(self, timeout: float = 60) -> list[dict]:
        """The cluster's alive nodes as ``ray.nodes()`` sees them, from a short-lived client process
        (a ``ray.init`` in the test process would pin this process to one cluster)."""
        script = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} "
            "for n in ray.nodes() if n['Alive']]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=self.env()
        )
        if out.returncode:
            raise RuntimeError(f"ray.nodes() failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, count: int, timeout: float = 120, *, unlike: set[str] = frozenset()) -> list[dict]:
        """Wait until ``count`` nodes are alive, none of them listed in ``unlike`` (node ids of nodes
        that were killed but that the cluster may not have declared dead yet)."""
        deadline = time.time() + timeout
        nodes: list[dict] = []
        while time.time() < deadline:
            for node in self.nodes:
                if not node.alive:
                    raise RuntimeError(f"ray node {node.name} exited:\n{_tail(node.log)}")
            try:
                nodes = [node for node in self.alive_nodes() if node["id"] not in unlike]
            except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError):
                nodes = []
            if len(nodes) >= count:
                return nodes
            time.sleep(1)
        raise RuntimeError(
            f"only {len(nodes)} of {count} ray nodes came up in {timeout:.0f} s:\n"
            + "\n".join(_tail(node.log) for node in self.nodes)
        )

    def actors(self, class_name: str) -> list[dict]:
        """Every actor of ``class_name`` the cluster knows (alive or dead), from its state API."""
        script = (
            "import json\nfrom ray.util.state import list_actors\n"
            f"actors = list_actors(address={self.dashboard!r}, filters=[('class_name', '=', {class_name!r})], "
            "detail=True, limit=10000, raise_on_missing_output=False)\n"
            "print(json.dumps([{k: getattr(a, k) for k in ('actor_id', 'state', 'node_id', 'pid', "
            "'num_restarts', 'job_id')} for a in actors]))"
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=self.env())
        if out.returncode:
            raise RuntimeError(f"list_actors failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def worker_processes(self, prefix: str) -> list[tuple[int, str, str]]:
        """(pid, node name, process title) of this cluster's Ray worker processes whose title starts
        with ``prefix`` (e.g. ``ray::_PredictActor``, which is ``ray::_PredictActor.run`` while the
        actor runs a call); other Rays on the machine are left out."""
        import psutil

        found = []
        for node in self.nodes:
            for pid in node.pids():
                try:
                    title = " ".join(psutil.Process(pid).cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                if title.startswith(prefix):
                    found.append((pid, node.name, title))
        return found

    def stop_node(self, node: Node) -> None:
        """Lose ``node``: kill its process group and its workers at once."""
        node.kill()
        if node.name in self.ids:
            self._lost.add(self.ids[node.name])

    def restart_second(self) -> None:
        """Start a fresh second node (after :meth:`stop_node`); :meth:`ready` waits for it."""
        self.second = _start_node("second", self.root, self._second_args(), fresh=True)
        self.nodes = [self.head, self.second]
        self._restarted = True

    def ready(self, timeout: float = 120) -> None:
        """Return once both nodes are up (at once unless the second was restarted)."""
        if self._restarted:
            self._remember(self.wait_for_nodes(2, timeout, unlike=self._lost))
            self._restarted = False

    def _remember(self, nodes: list[dict]) -> None:
        """Keep the node ids: a killed node stays "alive" in the cluster's view for a while."""
        self.ids = {
            name: node["id"] for node in nodes for name in ("head", "second") if f"node_{name}" in node["resources"]
        }

    def _second_args(self) -> list[str]:
        return ["--address", self.address, "--num-cpus", str(self.cpus), "--resources", json.dumps({"node_second": 1})]

    def shutdown(self) -> None:
        """Kill the second node, then the head (their own processes only); drop the temp folders."""
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def client_env(root: Path) -> dict[str, str]:
    """The environment of the cluster's nodes and clients: its token; no inherited Ray address or token."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
    }
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "token"))
    env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # The nodes have geoseg on their PATH, as a real cluster's image does: a submitted job's
    # entrypoint (`geoseg run ...`) must find it even when the tests run without an activated venv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"({path} unreadable)"


def _die_with_parent() -> None:
    """In the node's process before it runs ``ray start``: SIGTERM it if the test process dies first
    (killed by a CI timeout, say), so no cluster outlives its tests; ``ray start --block`` stops its
    Ray processes on SIGTERM. Linux only; elsewhere the fixture's teardown is all there is."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start_node(name: str, root: Path, args: list[str], *, fresh: bool = False) -> Node:
    temp_dir = root / name[0]
    if fresh:
        shutil.rmtree(temp_dir, ignore_errors=True)
    temp_dir.mkdir()
    log = root / f"{name}.log"
    # Each node its own ports for everything that has a fixed default (two nodes share this host).
    ports = [
        "--node-manager-port",
        str(free_port()),
        "--object-manager-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
    ]
    command = [
        RAY,
        "start",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        *args,
        *ports,
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=client_env(root),
            preexec_fn=_die_with_parent,
        )
    return Node(name, process, temp_dir, log)


def start_cluster(*, cpus: int = 2, timeout: float = 120) -> LocalCluster:
    """Start the head (resource ``node_head``) and a second node (``node_second``); wait until both are alive."""
    root = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    (root / "token").write_text(secrets.token_hex(32))
    port, dashboard_port = free_port(), free_port()
    head = _start_node(
        "head",
        root,
        [
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            str(cpus),
            "--resources",
            json.dumps({"node_head": 1}),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
            "--include-dashboard",
            "true",
            "--ray-client-server-port",
            str(free_port()),
        ],
    )
    cluster = LocalCluster(port, dashboard_port, head, head, root, cpus, [head])
    try:
        cluster.wait_for_nodes(1, timeout)
        cluster.second = _start_node("second", root, cluster._second_args())
        cluster.nodes.append(cluster.second)
        cluster._remember(cluster.wait_for_nodes(2, timeout))
    except BaseException:
        cluster.shutdown()
        raise
    return cluster
