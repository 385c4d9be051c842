"""What a benchmark measures besides time: the memory of a process tree, and other work's share of the CPU.

Timings on a shared machine are only as good as its quiet: ``other_cpu_share``
is the share of all cores that *other* processes used while we ran.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time

import psutil

__all__ = ["Contention", "MemorySampler", "cpu_seconds", "wait_until_quiet"]


class MemorySampler:
    """Background thread: peak memory of this process and all its descendants.

    Every ``interval`` it sums RSS over the process tree (cheap: one read of
    ``/proc/<pid>/statm`` each). RSS counts shared pages (torch's libraries,
    Ray's object store) once per process that maps them, so it overstates a
    dozen Ray processes; where the kernel offers it the reported peak is
    therefore PSS (proportional set size: each shared page split among its
    sharers). PSS costs a page-table walk (~10 ms for a process holding torch,
    so a full tree costs ~0.1 s; listing the tree itself scans /proc), so it is read every ``pss_every`` seconds
    and whenever the RSS sum reaches a new high (at most once a second; with ``rise``,
    only a high that share above the last PSS sample's), not at every tick: sampling
    must not steal a 2-core machine from the run it measures. ``busy_s`` says what
    sampling cost.
    """

    def __init__(self, interval: float = 1.0, pss_every: float = 5.0, rise: float = 0.0):
        self.interval, self.pss_every = interval, pss_every
        self.rise = rise  # a new RSS high triggers PSS only this share above the last PSS sample's
        self.root = psutil.Process()
        self.metric = "pss" if _pss(self.root.pid) is not None else "rss"
        self.peak_total = 0  # in ``metric``
        self.peak_driver = 0
        self.peak_rss_sum = 0  # plain RSS sum, for comparison
        self.peak_processes = 0
        self.peak_by_name: dict[str, int] = {}
        self.samples = 0
        self.pss_samples = 0
        self.busy_s = 0.0
        self._names: dict[int, str] = {}
        self._cpu: dict[int, tuple[str, float]] = {}  # pid → (name, last seen CPU seconds)
        self._cpu_start = cpu_seconds(self.root)
        self._last_pss = -math.inf
        self._rss_high = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="geoseg-bench-memory", daemon=True)

    def _name(self, proc: psutil.Process, refresh: bool) -> str:
        if proc.pid == self.root.pid:
            return "driver"
        if refresh or proc.pid not in self._names:  # Ray workers retitle themselves when they become actors
            self._names[proc.pid] = _process_name(proc)
        return self._names[proc.pid]

    def sample(self, full: bool = False) -> int:
        """Take one sample (with PSS if ``full`` or due); return the RSS sum in bytes."""
        started = time.perf_counter()
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            procs = [self.root]
        rows = []
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                cpu = cpu_seconds(proc)
            except psutil.Error:  # exited between listing and reading
                continue
            rows.append((proc, rss))
            self._cpu[proc.pid] = (self._name(proc, refresh=False), cpu)
        rss_sum = sum(rss for _, rss in rows)
        self.peak_rss_sum = max(self.peak_rss_sum, rss_sum)
        self.peak_processes = max(self.peak_processes, len(rows))
        now = time.monotonic()
        risen = rss_sum > self._rss_high * (1 + self.rise)
        due = now - self._last_pss >= self.pss_every or (risen and now - self._last_pss >= 1.0)
        if self.metric == "rss" or full or due:
            values = []
            for proc, rss in rows:
                value = rss if self.metric == "rss" else _pss(proc.pid)
                if value is None:
                    continue
                name = self._name(proc, refresh=True)
                values.append(value)
                self.peak_by_name[name] = max(self.peak_by_name.get(name, 0), value)
                if proc.pid == self.root.pid:
                    self.peak_driver = max(self.peak_driver, value)
            self.peak_total = max(self.peak_total, sum(values))
            self._rss_high = max(self._rss_high, rss_sum)
            self._last_pss = now
            self.pss_samples += 1
        self.samples += 1
        self.busy_s += time.perf_counter() - started
        return rss_sum

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds each kind of process used, as last seen (at most one interval short).

        The driver counts from when the sampler started; other processes their whole life.
        """
        totals: dict[str, float] = {}
        for pid, (name, seconds) in self._cpu.items():
            if pid == self.root.pid:
                seconds -= self._cpu_start
            totals[name] = totals.get(name, 0.0) + seconds
        return totals

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample(full=True)
        self._contention = Contention()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample(full=True)
        self.other_cpu_share = self._contention.share(sum(self.cpu_by_name().values()))


class Contention:
    """How much of the machine *other* work used while we ran.

    The CPU-busy time of the whole machine minus our own, as a share of all its
    cores. On a shared 2-core box this is what makes two timings comparable or not.
    """

    def __init__(self):
        self.started = time.monotonic()
        self.busy = _busy_seconds()

    def share(self, owncpu_seconds: float) -> float:
        wall = time.monotonic() - self.started
        other = _busy_seconds() - self.busy - owncpu_seconds
        return max(0.0, other) / (wall * (psutil.cpu_count() or 1)) if wall > 0 else 0.0


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return (
        sum(times)
        - times.idle
        - getattr(times, "iowait", 0.0)
        - getattr(times, "guest", 0.0)
        - getattr(times, "guest_nice", 0.0)
    )


def _pss(pid: int) -> int | None:
    """Proportional set size in bytes from ``/proc/<pid>/smaps_rollup``; None where unavailable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(proc: psutil.Process) -> float:
    cpu = proc.cpu_times()
    return cpu.user + cpu.system


def wait_until_quiet(root: psutil.Process, *, timeout: float = 20.0, share: float = 0.05) -> float:
    """Wait until this process's descendants use under ``share`` of a core; return the seconds waited.

    After the stage, Ray's processes take a few seconds to exit (or, with a
    shared Ray, to go idle); the model-only loop must not share the CPU with them.
    """

    def usage() -> dict[int, float]:
        seconds = {}
        for proc in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                seconds[proc.pid] = cpu_seconds(proc)
        return seconds

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = usage()
        time.sleep(0.5)
        after = usage()
        if sum(after[pid] - before[pid] for pid in after.keys() & before.keys()) < share * 0.5:
            break
    return time.monotonic() - started


def _process_name(proc: psutil.Process) -> str:
    """Ray workers retitle themselves (``ray::_MapWorker``); the first word says who is who."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        cmdline = []
    word = cmdline[0].split()[0] if cmdline and cmdline[0].strip() else proc.name()
    if word.startswith("ray::"):  # ray::MapWorker(MapBatches(_PredictActor)).submit → ray::MapWorker
        return re.split(r"[(.]", word, maxsplit=1)[0]
    if "python" in os.path.basename(word) and len(cmdline) > 1:  # name Python processes by their script
        script = next((arg for arg in cmdline[1:] if not arg.startswith("-")), "")
        return f"python {os.path.basename(script)}".strip()
    return os.path.basename(word)


def memory_fields(memory: MemorySampler) -> dict:
    """Peak memory (MB) of the whole job and of the driver, and how it was sampled."""
    return {
        "peak_rss_mb": round(memory.peak_total / 2**20, 1),
        "peak_rss_driver_mb": round(memory.peak_driver / 2**20, 1),
        "memory_metric": memory.metric,
        "peak_rss_sum_mb": round(memory.peak_rss_sum / 2**20, 1),
        "peak_processes": memory.peak_processes,
        "memory_samples": memory.samples,
        "memory_pss_samples": memory.pss_samples,
        "memory_sampler_busy_s": round(memory.busy_s, 2),
    }


def top_processes(memory: MemorySampler) -> dict:
    """The eight processes with the highest peak memory (MB) and the eight that used the most CPU (s)."""
    return {
        "peak_by_process_mb": {
            name: round(value / 2**20, 1)
            for name, value in sorted(memory.peak_by_name.items(), key=lambda kv: -kv[1])[:8]
        },
        "cpu_s_by_process": {
            name: round(value, 1) for name, value in sorted(memory.cpu_by_name().items(), key=lambda kv: -kv[1])[:8]
        },
    }
