"""Start the fake provider servers as their own processes, so a test can kill or restart them like real ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeServer:
    """One fake server process; its counts survive restarts (DIR/submissions.jsonl), its memory does not."""

    module: str
    root: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> FakeServer:
        """Start it and wait until it answers; a port another process took meanwhile means a new port."""
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            argv = [sys.executable, "-m", self.module, "--port", str(self.port), "--root", str(self.root)]
            env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(REPO)}
            with (self.root / "server.log").open("a") as log:
                self.process = subprocess.Popen(
                    [*argv, *self.args, *extra], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            if self._answers(timeout=30):
                return self
            self.stop()
            self.port = free_port()
        raise RuntimeError(f"{self.module} did not start; see {self.root / 'server.log'}")

    def _answers(self, timeout: float) -> bool:
        """True once this process (not some other one on the port) answers GET /fake/stats."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                httpx.get(f"{self.url}/fake/stats", timeout=1).raise_for_status()
                return self.process.poll() is None
            except httpx.HTTPError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self, *extra: str) -> None:
        """Kill and start again on the same port: everything it held in memory is gone."""
        self.stop()
        self.start(*extra)

    def submissions(self) -> list[dict]:
        """Every request the server accepted (a job it will run and bill), across restarts."""
        return self._log("submissions.jsonl")

    def rejections(self) -> list[dict]:
        """Every submission answered with 429."""
        return self._log("rejections.jsonl")

    def _log(self, name: str) -> list[dict]:
        path = self.root / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/fake/stats", timeout=5).json()


def fake_comfyui(root: Path, *args: str) -> FakeServer:
    return FakeServer("tests.fakes.fake_comfyui", root, list(args)).start()


def fake_gemini(root: Path, api_key: str, *args: str) -> FakeServer:
    return FakeServer("tests.fakes.fake_gemini", root, ["--api-key", api_key, *args]).start()
