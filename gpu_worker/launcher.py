"""One CV worker per GPU (or N on a GPU-less host), supervised: jittered restart backoff, warm shutdown.

Each worker is a prefork Celery worker (see gpu_worker.process_model): its parent stays responsive
(heartbeats, inspect, time limits) while its pool children, K per GPU, analyse. The launcher never
initialises CUDA: it finds GPUs from CUDA_VISIBLE_DEVICES or `nvidia-smi`, and each worker sees exactly
one GPU through its own CUDA_VISIBLE_DEVICES, so models load in the pool children only.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpu_worker import process_model
from vidpipe_tasks.cli.workers import worker_argv
from vidpipe_tasks.settings import CV_QUEUE, Settings

log = logging.getLogger("gpu_worker.launcher")

#: Restart delays after a child dies: doubles from the first to the last, reset once the child is ready.
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0
#: Each delay is scaled by a random factor in [1 - JITTER, 1 + JITTER], so workers that died together
#: (a PostgreSQL or Redis restart) do not all come back, and fail again, at the same instant.
BACKOFF_JITTER = 0.5
#: Pool children per GPU: while one child's model runs, another decodes and preprocesses its clip.
DEFAULT_CHILDREN_PER_GPU = 2


@dataclass(frozen=True)
class Slot:
    """One worker to keep running: its node name, the environment that pins its device, its pool size."""

    name: str
    env: dict[str, str]
    concurrency: int = 1


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


def plan_slots(
    device: str,
    processes: int | None,
    gpus: list[str],
    *,
    children_per_gpu: int = DEFAULT_CHILDREN_PER_GPU,
    cores: int | None = None,
) -> list[Slot]:
    """Decide the worker processes.

    Args:
        device: "cuda" (one per GPU), "cpu" (`processes` of them, GPUs hidden) or "auto" (cuda if any GPU).
        processes: process count for cpu; for cuda, at most this many GPUs are used.
        gpus: ids from discover_gpus().
        children_per_gpu: pool children of each GPU worker (scenes in flight per GPU).
        cores: CPU cores of the host (default: os.cpu_count()); with as many CPU workers as cores, each
            gets one math thread, since more threads per process only contend for the same cores.

    Returns:
        One Slot per worker.
    """
    if children_per_gpu < 1:
        raise ValueError(f"children per GPU must be at least 1, not {children_per_gpu}")
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cuda":
        if not gpus:
            raise RuntimeError("--device cuda: no GPU found (CUDA_VISIBLE_DEVICES empty and nvidia-smi lists none)")
        chosen = gpus[:processes] if processes else gpus
        env = {"VIDPIPE_CV_DEVICE": "cuda"}
        return [Slot(f"cv-gpu{g}", {**env, "CUDA_VISIBLE_DEVICES": g}, children_per_gpu) for g in chosen]
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; expected cuda, cpu or auto")
    count = processes or 1
    env = {"CUDA_VISIBLE_DEVICES": "", "VIDPIPE_CV_DEVICE": "cpu"}
    threads = cpu_threads(count, cores if cores is not None else os.cpu_count() or 1)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch, and the BLAS behind dlib, read it at import
    return [Slot(f"cv-cpu{i}", dict(env)) for i in range(count)]


def cpu_threads(processes: int, cores: int) -> int | None:
    """Math threads per CPU worker: one each once the workers fill the cores, else the libraries' default."""
    return max(1, cores // processes) if processes >= cores else None


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
    ready: bool = False
    ready_file: Path | None = None
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
        rng: random.Random | None = None,
    ) -> None:
        self.settings, self.logdir, self.loglevel = settings, logdir, loglevel
        self.disable_prefetch = disable_prefetch
        self.rng = rng or random.Random()
        self.rundir = Path(tempfile.mkdtemp(prefix="vidpipe-cv-"))
        self.children = [Child(slot, ready_file=self.rundir / f"{slot.name}.ready") for slot in slots]
        self.stopping = False

    def worker_command(self, slot: Slot) -> list[str]:
        """The prefork worker command line of one slot (the process model's module included)."""
        argv = worker_argv(
            slot.name,
            [CV_QUEUE],
            pool="prefork",
            concurrency=slot.concurrency,
            loglevel=self.loglevel,
            embedded=self.settings.is_filesystem_broker,
            disable_prefetch=self.disable_prefetch,
            json_logs=self.settings.log_format == "json",
        )
        return [*argv, "--include", process_model.MODULE]

    def _spawn(self, child: Child) -> None:
        child.ready_file.unlink(missing_ok=True)  # readiness must come from this run
        env = {
            **os.environ,
            **self.settings.as_env(),
            **child.slot.env,
            "VIDPIPE_WARM_ENGINE": process_model.WARM_IN_CHILD,
            process_model.READY_FILE_ENV: str(child.ready_file),
        }
        argv = self.worker_command(child.slot)
        if self.logdir is None:  # containers: workers log to the launcher's stdout (docker/kubectl logs)
            child.process = subprocess.Popen(argv, env=env)
        else:
            self.logdir.mkdir(parents=True, exist_ok=True)
            with (self.logdir / f"{child.slot.name}.log").open("a") as out:
                child.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        child.started, child.restart_at, child.ready = time.monotonic(), None, False
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

    def _is_ready(self, child: Child) -> bool:
        """The worker consumes the queue and every pool child has loaded its models."""
        counts = process_model.ready_counts(child.ready_file)
        models_loaded = counts[process_model.MODELS_READY] >= child.slot.concurrency
        return counts[process_model.CONSUMER_READY] >= 1 and models_loaded

    def _check(self, child: Child, now: float) -> None:
        if child.process is not None and child.process.poll() is None:
            if not child.ready and self._is_ready(child):
                # A child that got this far is healthy: the next failure starts the backoff over.
                child.ready, child.backoff = True, BACKOFF_FIRST_S
                log.info("%s ready after %.1fs", child.slot.name, now - child.started)
            return
        if child.restart_at is None:  # it just died
            delay = child.backoff * self.rng.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
            child.restart_at = now + delay
            log.warning(
                "%s exited with %s after %.0fs (%s); restarting in %.1fs",
                child.slot.name,
                child.process.returncode if child.process else None,
                now - child.started,
                "was ready" if child.ready else "never ready",
                delay,
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
        shutil.rmtree(self.rundir, ignore_errors=True)
        return 0
