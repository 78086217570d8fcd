"""One CV worker process per GPU (or N on a GPU-less host), supervised: restart with backoff, warm shutdown.

The launcher never initialises CUDA: it finds GPUs from CUDA_VISIBLE_DEVICES or `nvidia-smi`, and each
child sees exactly one GPU through its own CUDA_VISIBLE_DEVICES, so models load in the child only.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vidpipe_tasks.settings import CV_QUEUE, Settings
from vidpipe_tasks.workers import worker_argv

log = logging.getLogger("gpu_worker.launcher")

#: Restart delays after a child dies: doubles from the first to the last, reset after a healthy run.
BACKOFF_FIRST_S, BACKOFF_MAX_S, HEALTHY_RUN_S = 1.0, 30.0, 60.0


@dataclass(frozen=True)
class Slot:
    """One worker process to keep running: its node name and the environment that pins its device."""

    name: str
    env: dict[str, str]


def discover_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """GPU ids this host offers, without touching CUDA (CUDA_VISIBLE_DEVICES wins over nvidia-smi)."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def plan_slots(device: str, processes: int | None, gpus: list[str]) -> list[Slot]:
    """Decide the worker processes.

    Args:
        device: "cuda" (one per GPU), "cpu" (`processes` of them, GPUs hidden) or "auto" (cuda if any GPU).
        processes: process count for cpu; for cuda, at most this many GPUs are used.
        gpus: ids from discover_gpus().

    Returns:
        One Slot per process.
    """
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cuda":
        if not gpus:
            raise RuntimeError("--device cuda: no GPU found (CUDA_VISIBLE_DEVICES empty and nvidia-smi lists none)")
        chosen = gpus[:processes] if processes else gpus
        return [Slot(f"cv-gpu{g}", {"CUDA_VISIBLE_DEVICES": g, "VIDPIPE_CV_DEVICE": "cuda"}) for g in chosen]
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; expected cuda, cpu or auto")
    return [Slot(f"cv-cpu{i}", {"CUDA_VISIBLE_DEVICES": "", "VIDPIPE_CV_DEVICE": "cpu"}) for i in range(processes or 1)]


def gpu_memory_line(gpu: str) -> str:
    """Used/total memory of one GPU from nvidia-smi (no CUDA context in this process)."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    out = subprocess.run(
        ["nvidia-smi", f"--id={gpu}", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip() or out.stderr.strip()


@dataclass
class Child:
    """A supervised worker process and its restart state."""

    slot: Slot
    process: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST_S
    restart_at: float | None = None
    restarts: int = 0
    logs: list[Path] = field(default_factory=list)


class Launcher:
    """Starts one Celery worker per slot on the CV queue and keeps them running until told to stop."""

    def __init__(
        self,
        settings: Settings,
        slots: list[Slot],
        logdir: Path | None,
        *,
        loglevel: str = "info",
        disable_prefetch: bool = False,
    ) -> None:
        self.settings, self.logdir, self.loglevel = settings, logdir, loglevel
        self.disable_prefetch = disable_prefetch
        self.children = [Child(slot) for slot in slots]
        self.stopping = False

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, **self.settings.as_env(), **child.slot.env, "VIDPIPE_WARM_ENGINE": "1"}
        argv = worker_argv(
            child.slot.name,
            [CV_QUEUE],
            pool="solo",
            loglevel=self.loglevel,
            embedded=self.settings.is_filesystem_broker,
            disable_prefetch=self.disable_prefetch,
        )
        if self.logdir is None:  # containers: workers log to the launcher's stdout (docker/kubectl logs)
            child.process = subprocess.Popen(argv, env=env)
        else:
            self.logdir.mkdir(parents=True, exist_ok=True)
            with (self.logdir / f"{child.slot.name}.log").open("a") as out:
                child.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        child.started, child.restart_at = time.monotonic(), None
        log.info(
            "started %s (pid %s, CUDA_VISIBLE_DEVICES=%r)",
            child.slot.name,
            child.process.pid,
            child.slot.env.get("CUDA_VISIBLE_DEVICES"),
        )
        if child.slot.env.get("VIDPIPE_CV_DEVICE") == "cuda":
            log.info(
                "%s GPU memory at start: %s", child.slot.name, gpu_memory_line(child.slot.env["CUDA_VISIBLE_DEVICES"])
            )

    def _check(self, child: Child, now: float) -> None:
        if child.process is not None and child.process.poll() is None:
            return
        if child.restart_at is None:  # it just died
            ran = now - child.started
            child.backoff = BACKOFF_FIRST_S if ran >= HEALTHY_RUN_S else child.backoff
            child.restart_at = now + child.backoff
            log.warning(
                "%s exited with %s after %.0fs; restarting in %.0fs",
                child.slot.name,
                child.process.returncode if child.process else None,
                ran,
                child.backoff,
            )
            child.backoff = min(BACKOFF_MAX_S, child.backoff * 2)
        elif now >= child.restart_at:
            child.restarts += 1
            self._spawn(child)

    def request_stop(self, *_: object) -> None:
        """Signal handler: warm shutdown (each child finishes the analysis it is running)."""
        self.stopping = True

    def run(self, poll_s: float = 0.2, stop_timeout_s: float = 960.0) -> int:
        """Supervise until SIGTERM/SIGINT; then forward SIGTERM and wait for every child."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        for child in self.children:
            self._spawn(child)
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
            time.sleep(poll_s)
        return self._stop(stop_timeout_s)

    def _stop(self, timeout_s: float) -> int:
        live = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        log.info("warm shutdown: waiting for %d worker(s) to finish their current task", len(live))
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("pid %s did not stop within %.0fs; killing it", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
        return 0
