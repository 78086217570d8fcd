"""Throwaway Redis and PostgreSQL servers on loopback ports, started from the installed Debian binaries."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class ServerUnavailable(RuntimeError):
    """The server's binaries are not installed (CI installs them in .ci/run via scripts/test.sh)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port} within {timeout:.0f}s")


@dataclass
class RedisServer:
    """One redis-server process; `url(db)` gives a database URL on it."""

    port: int
    process: subprocess.Popen
    argv: list[str] | None = None
    workdir: Path | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def restart(self, sig: int = signal.SIGTERM, down_s: float = 0.0) -> float:
        """Stop the server with `sig` (SIGTERM saves first; SIGKILL loses what was not yet fsynced), wait
        `down_s`, start it again on the same port and folder; returns the seconds it was unreachable."""
        started = time.monotonic()
        self.process.send_signal(sig)
        self.process.wait(30)
        time.sleep(down_s)
        with (self.workdir / "redis.log").open("a") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, 30, "redis-server")
        _wait_redis_loaded(self.port)
        return time.monotonic() - started

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _wait_redis_loaded(port: int, timeout: float = 30) -> None:
    """After a restart Redis answers LOADING until its AOF is replayed."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.ping()
            return
        except redis.exceptions.BusyLoadingError:
            time.sleep(0.1)
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"redis on port {port} still loading after {timeout:.0f}s")


def start_redis(workdir: Path, appendonly: bool = False) -> RedisServer:
    """Start redis-server on a free loopback port; without persistence, or with the AOF deploy/compose turns on."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailable("redis-server is not installed (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--save", "", "--appendonly", "yes" if appendonly else "no", "--databases", "16"]
    log = (workdir / "redis.log").open("w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_port(port, 15, "redis-server")
    return RedisServer(port, process, argv, workdir)


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise ServerUnavailable("PostgreSQL server binaries not found (apt-get install postgresql)")


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, trust auth on loopback."""

    port: int
    datadir: Path
    bindir: Path
    run_as: list[str]
    #: The postmaster options it was started with (port, socket folder), for a restart.
    options: str = ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def restart(self, down_s: float = 0.0) -> float:
        """Stop fast (connections are cut mid-query), stay down `down_s`, start again; returns seconds down."""
        started = time.monotonic()
        pg_ctl = [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w"]
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, check=False)
        time.sleep(down_s)
        for _ in range(3):  # a start that lost a race with the old postmaster's exit: start again
            done = subprocess.run([*pg_ctl, "-o", self.options, "start", "-l", str(self.datadir.parent / "pg.log")],
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode == 0:
                break
            time.sleep(1)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout} {done.stderr}")
        _wait_port(self.port, 30, "postgres")
        return time.monotonic() - started

    def stop(self) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        if self.datadir.parent.name.startswith("vidpipe-pg-"):
            shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_postgres(workdir: Path) -> PostgresServer:
    """initdb a fresh cluster and start it on a free loopback port (as `postgres` when running as root)."""
    bindir = _pg_bindir()
    run_as: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root; the Debian package creates the postgres user. The cluster gets a
        # folder of its own under /tmp: postgres must reach it, and pytest resets its temp root to 0700
        # whenever another pytest session starts, so a cluster below it would lose its way in.
        run_as = ["runuser", "-u", "postgres", "--"]
        workdir = Path(tempfile.mkdtemp(prefix="vidpipe-pg-"))  # 0700, under the world-traversable /tmp
        shutil.chown(workdir, user="postgres")
    datadir = workdir / "data"
    port = free_port()
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        [*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-o", options, "-l", str(workdir / "pg.log"), "-w"]
        + ["start"],
        check=True,
        capture_output=True,
    )
    _wait_port(port, 30, "postgres")
    return PostgresServer(port, datadir, bindir, run_as, options)
