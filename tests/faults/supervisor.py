"""A process supervisor for the fault tier: restarts whatever dies, as systemd's Restart=always would."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Service:
    """One supervised process (its own process group, so a kill can take the whole worker)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logfile: Path
    process: subprocess.Popen | None = None
    exited_at: float | None = None
    starts: int = 0


@dataclass
class Supervisor:
    """Start services and restart any that exits after `restart_delay_s` (RestartSec=1 in deploy/systemd)."""

    restart_delay_s: float = 1.0
    services: dict[str, Service] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, argv: list[str], env: dict[str, str], logfile: Path) -> None:
        self.services[name] = Service(name, argv, env, logfile)

    def _spawn(self, service: Service) -> None:
        service.logfile.parent.mkdir(parents=True, exist_ok=True)
        with service.logfile.open("a") as out:
            service.process = subprocess.Popen(
                service.argv, env=service.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        service.exited_at, service.starts = None, service.starts + 1

    def start(self) -> None:
        for service in self.services.values():
            self._spawn(service)
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for service in self.services.values():
                    if service.process is None or service.process.poll() is None:
                        continue
                    now = time.monotonic()
                    service.exited_at = service.exited_at or now
                    if now - service.exited_at >= self.restart_delay_s:
                        _reap_group(service.process.pid)
                        self._spawn(service)

    def sessions(self) -> set[int]:
        """The session ids of the running services (each was started as a session leader)."""
        return {s.process.pid for s in self.services.values() if s.process is not None}

    def restarts(self) -> dict[str, int]:
        return {name: s.starts - 1 for name, s in self.services.items()}

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop supervising, then SIGTERM every group and SIGKILL what outlives `timeout_s`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        live = [s.process for s in self.services.values() if s.process is not None and s.process.poll() is None]
        for process in live:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in live:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for service in self.services.values():
            if service.process is not None:
                _reap_group(service.process.pid)

    def log_tails(self, chars: int = 2500) -> str:
        return "\n".join(
            f"--- {s.name} ---\n{s.logfile.read_text(errors='replace')[-chars:]}"
            for s in self.services.values()
            if s.logfile.is_file()
        )


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_group(pgid: int) -> None:
    """SIGKILL whatever is left of a process group (pool children of a worker killed whole)."""
    _signal_group(pgid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def worker_pids(node_prefix: str, sessions: set[int] | None = None) -> list[int]:
    """Main processes of the Celery workers whose node name starts with `node_prefix` (e.g. "cv-cpu0").

    `sessions`: only processes in these sessions (a supervisor's services each lead one), so a nemesis
    never touches another test run's workers on the same machine.
    """
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "worker" in args and "-n" in args:
            node = args[args.index("-n") + 1] if args.index("-n") + 1 < len(args) else ""
            if node.startswith(node_prefix + "@") and _is_main(int(proc.name), args) and _in(int(proc.name), sessions):
                pids.append(int(proc.name))
    return pids


def _in(pid: int, sessions: set[int] | None) -> bool:
    if sessions is None:
        return True
    try:
        return os.getsid(pid) in sessions
    except ProcessLookupError:
        return False


def _is_main(pid: int, args: list[str]) -> bool:
    """A prefork child has the same command line as its parent: keep only the top one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parent_args = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return True
    return [a.decode(errors="replace") for a in parent_args] != args


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Signal a process and all its descendants (a worker that dies whole: node loss, OOM)."""
    tree = [pid]
    for child in children(pid):
        tree += kill_tree(child, sig)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    return tree
