"""Launcher restarts: jittered exponential backoff, reset once a child reports ready (not after a run time)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gpu_worker import process_model
from gpu_worker.launcher import BACKOFF_FIRST_S, BACKOFF_JITTER, BACKOFF_MAX_S, Child, Launcher, Slot, plan_slots
from vidpipe_tasks.settings import Settings


class FakeProcess:
    """Stands in for a worker's Popen: alive until `die()`."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.pid = 4242

    def poll(self) -> int | None:
        return self.returncode

    def die(self, code: int = 1) -> None:
        self.returncode = code


@pytest.fixture
def launcher(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Launcher:
    slots = [Slot("cv-cpu0", {}), Slot("cv-cpu1", {})]
    launched = Launcher(settings, slots, None, rng=random.Random(7))

    def spawn(child: Child) -> None:  # what _spawn does to the child's state, without a process
        child.ready_file.unlink(missing_ok=True)
        child.process, child.started, child.restart_at, child.ready = FakeProcess(), 0.0, None, False

    monkeypatch.setattr(launched, "_spawn", spawn)
    for child in launched.children:
        launched._spawn(child)
    return launched


def die_and_delay(launcher: Launcher, child: Child, now: float) -> float:
    child.process.die()
    launcher._check(child, now)
    return child.restart_at - now


def restart(launcher: Launcher, child: Child) -> None:
    launcher._check(child, child.restart_at)
    assert child.process.poll() is None, "restarted"


def mark_ready(child: Child, models: int = 1) -> None:
    with child.ready_file.open("a") as out:
        out.write(f"{process_model.CONSUMER_READY} 1\n" + f"{process_model.MODELS_READY} 2\n" * models)


def test_a_child_that_never_gets_ready_backs_off_exponentially_with_jitter_up_to_the_cap(launcher) -> None:
    child = launcher.children[0]
    delays = []
    for _ in range(8):
        delays.append(die_and_delay(launcher, child, 100.0))
        restart(launcher, child)
    nominal = [min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**i) for i in range(8)]
    for delay, base in zip(delays, nominal, strict=True):
        assert base * (1 - BACKOFF_JITTER) <= delay <= base * (1 + BACKOFF_JITTER)
    assert delays[-1] > BACKOFF_MAX_S * (1 - BACKOFF_JITTER) and len(set(delays)) == len(delays)


def test_the_backoff_starts_over_once_the_child_is_ready_however_briefly_it_ran(launcher) -> None:
    child = launcher.children[0]
    for _ in range(4):  # 1, 2, 4, 8: the next would be 16
        die_and_delay(launcher, child, 10.0)
        restart(launcher, child)
    mark_ready(child)
    launcher._check(child, 10.5)  # ready half a second after the start
    assert child.ready
    delay = die_and_delay(launcher, child, 11.0)
    assert delay <= BACKOFF_FIRST_S * (1 + BACKOFF_JITTER)


def test_a_long_run_without_readiness_does_not_reset_the_backoff(launcher) -> None:
    child = launcher.children[0]
    for _ in range(3):
        die_and_delay(launcher, child, 0.0)
        restart(launcher, child)
    delay = die_and_delay(launcher, child, 3600.0)  # an hour alive, never ready: still backing off
    assert delay >= BACKOFF_FIRST_S * 8 * (1 - BACKOFF_JITTER)


def test_ready_means_the_consumer_and_every_pool_child_with_its_models(settings: Settings) -> None:
    launcher = Launcher(settings, [Slot("cv-gpu0", {}, concurrency=2)], None)
    child = launcher.children[0]
    assert not launcher._is_ready(child)
    mark_ready(child, models=1)
    assert not launcher._is_ready(child), "one of two pool children still loading"
    with child.ready_file.open("a") as out:
        out.write(f"{process_model.MODELS_READY} 3\n")
    assert launcher._is_ready(child)


def test_children_that_die_together_come_back_at_different_times(launcher) -> None:
    a, b = launcher.children
    assert die_and_delay(launcher, a, 50.0) != die_and_delay(launcher, b, 50.0)


def test_the_worker_command_is_prefork_with_the_process_model_included(settings: Settings) -> None:
    slot = plan_slots("cuda", None, ["0"], children_per_gpu=2)[0]
    argv = Launcher(settings, [slot], None).worker_command(slot)
    assert argv[argv.index("--pool") + 1] == "prefork"
    assert argv[argv.index("--concurrency") + 1] == "2"
    assert argv[argv.index("--include") + 1] == "gpu_worker.process_model"
    assert argv[argv.index("-n") + 1] == "cv-gpu0@%h"


def test_cpu_workers_filling_the_cores_get_one_math_thread_each() -> None:
    assert all(s.env["OMP_NUM_THREADS"] == "1" for s in plan_slots("cpu", 2, [], cores=2))
    assert "OMP_NUM_THREADS" not in plan_slots("cpu", 1, [], cores=2)[0].env
    assert [s.concurrency for s in plan_slots("cuda", None, ["0", "1"], children_per_gpu=3)] == [3, 3]


def test_the_ready_file_counts_lines_by_kind(tmp_path: Path) -> None:
    path = tmp_path / "w.ready"
    assert process_model.ready_counts(path) == {"consumer": 0, "models": 0}
    path.write_text("consumer 1\nmodels 2\nmodels 3\nnoise\n")
    assert process_model.ready_counts(path) == {"consumer": 1, "models": 2}
