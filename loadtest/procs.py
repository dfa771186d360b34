"""Processes a load run or a drill starts on this machine: ``ranker serve`` and a private
``redis-server``, each on a free loopback port, stopped by the code that started them.

Nothing here reaches beyond 127.0.0.1. :class:`RankerServer` runs the real entry point
(``ranker serve --workers N``) with a clean ``RANKER_*`` environment plus what the caller
sets, its output in a file; :class:`RedisServer` can be killed (SIGKILL) and started again on
the same port (the Redis drill). :func:`tree_cpu_seconds` sums the CPU time of a process and
its children (uvicorn's workers) from ``/proc``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "models" / "default"


def free_port() -> int:
    """A TCP port the OS has just handed out on 127.0.0.1 (free at the time of the call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms; RuntimeError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every descendant alive now."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def tree_cpu_by_pid(pid: int) -> dict[int, float]:
    """User + system CPU seconds of ``pid`` and of each live descendant, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (stat fields 14, 15)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (0 for a gone pid)."""
    return sum(tree_cpu_by_pid(pid).values())


class RedisServer:
    """A private ``redis-server`` on a free loopback port (no persistence)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers, 10.0, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL (no shutdown of any kind), then reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class RankerServer:
    """``ranker serve`` on a free loopback port with ``workers`` uvicorn workers.

    ``env`` adds ``RANKER_*`` settings to a copy of this environment stripped of every
    ``RANKER_*`` variable and of ``PROMETHEUS_MULTIPROC_DIR``; ``log_dir`` is the exposure and
    feedback log folder. Output goes to ``<log_dir>/../server-<port>.log``.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        bundle: Path = DEFAULT_BUNDLE,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log_dir = Path(log_dir)
        self.out = self.log_dir.parent / f"server-{self.port}.log"
        self.bundle = Path(bundle)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RANKER_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        self.env.update({"RANKER_LOG_DIR": str(self.log_dir), **(env or {})})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> RankerServer:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        script = Path(sys.executable).with_name("ranker")
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "ranker_cli"]
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    *cmd,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    "--bundle",
                    str(self.bundle),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._ready, timeout_s, f"ranker serve on port {self.port}")
            # Every worker must be up, not just the first: each one logs this line.
            wait_until(
                lambda: self.tail(100_000).count("Application startup complete.") >= self.workers,
                timeout_s,
                "every worker's startup",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"ranker serve exited {self.proc.returncode}:\n{self.tail()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, n: int = 3000) -> str:
        return self.out.read_text(errors="replace")[-n:] if self.out.exists() else ""

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid) if self.proc is not None else 0.0

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU seconds of the server's processes (supervisor and workers), by pid."""
        return tree_cpu_by_pid(self.pid) if self.proc is not None else {}

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5.0).text

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60.0) -> int | None:
        """Wait for the process to exit; its return code, or None if it still runs."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait ``timeout_s``, then SIGKILL the process and its workers if needed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            pids = tree_pids(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(timeout_s) is None:
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def clean_exit(self) -> bool:
        """Exited 0 or by the SIGTERM uvicorn re-raises, each worker's shutdown complete."""
        assert self.proc is not None
        done = self.tail(1_000_000).count("Application shutdown complete.")
        return self.proc.returncode in (0, -signal.SIGTERM) and done >= self.workers


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` in a Prometheus exposition ``text`` whose labels include
    ``labels`` (0 if there is none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got = dict(
            kv.split("=", 1) for kv in rest.rstrip("}").split(",") if "=" in kv
        )  # values keep their quotes
        if all(got.get(k) == f'"{v}"' for k, v in (labels or {}).items()):
            total += float(value)
    return total
