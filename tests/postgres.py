"""A real PostgreSQL server for tests: one throwaway cluster per test session.

The server is Debian's (package ``postgresql``, installed by ``.ci/run``): the
binaries under ``/usr/lib/postgresql/<version>/bin``. The cluster lives in a
temporary directory: data directory, log and unix socket directory; it listens
on 127.0.0.1 on a free port with ``trust`` authentication for the superuser
``kyodo``. PostgreSQL refuses to run as root, so under root every server command
runs as the ``postgres`` system user (``runuser -u postgres --``) and the
temporary directory belongs to that user.

Tests get a DSN from the session fixture :func:`postgres_dsn` (or the server
itself, to stop and start it, from :func:`postgres_server`). Import both into
the test module. Where the binaries are missing the fixture skips, except on CI
(environment variable ``CI`` set), where it fails: CI installs them.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"
SUPERUSER = "kyodo"
TOOLS = ("initdb", "pg_ctl", "postgres", "pg_isready")
READY_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding every tool, or None."""
    candidates = [
        Path(path)
        for path in glob.glob(BIN_GLOB)
        if all((Path(path) / tool).is_file() for tool in TOOLS)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda p: _version_key(p.parent.name))


def _version_key(version: str) -> tuple[int, ...]:
    """``"15"`` -> ``(15,)``, ``"9.6"`` -> ``(9, 6)``; unparsable names sort first."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def missing_reason() -> str | None:
    """Why a server cannot be started here, or None if it can."""
    if find_bin_dir() is None:
        return f"PostgreSQL is not installed (no {'/'.join(TOOLS)} under {BIN_GLOB})"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root, and runuser is not available to drop privileges"
        try:
            import pwd

            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root, and there is no {SERVER_USER!r} system user"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in ``base``: ``init()`` once, then ``start()``/``stop()``."""

    def __init__(self, base: Path, bin_dir: Path, port: int) -> None:
        self.base = base
        self.bin_dir = bin_dir
        self.port = port
        self.data = base / "data"
        self.sockets = base / "sockets"
        self.log = base / "server.log"
        self.as_server_user = os.geteuid() == 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """A libpq connection string for the superuser and the ``postgres`` database."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"

    def init(self) -> None:
        """Create the cluster: data directory, socket directory, server settings."""
        self.sockets.mkdir()
        if self.as_server_user:
            shutil.chown(self.base, SERVER_USER, SERVER_USER)
            shutil.chown(self.sockets, SERVER_USER, SERVER_USER)
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        settings = (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.sockets}'\n"
            # a test cluster: a lost machine loses nothing worth keeping
            "fsync = off\n"
            "max_connections = 50\n"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(settings)

    def start(self) -> None:
        """Start the server as a child of this process and wait until it accepts connections.

        Not ``pg_ctl start``: that leaves the server to be reaped by init, which
        in some containers never reaps, and every stopped server stays a zombie.
        """
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data)]
        if self.as_server_user:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_ready()

    def stop(self) -> None:
        """Stop the server (fast: roll back open transactions, disconnect clients)."""
        if not self.is_running():
            return
        assert self.process is not None
        result = self._run(
            "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False
        )
        if result.returncode != 0:
            self.process.kill()
        self.process.wait(timeout=COMMAND_TIMEOUT_S)

    def is_running(self) -> bool:
        """Whether the server process started by :meth:`start` is still running."""
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        """Whether the server accepts connections on its TCP port."""
        result = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        return result.returncode == 0

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``pg_isready`` until the server answers; fail with its log after the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_ready():
                return
            if not self.is_running():
                break
            time.sleep(0.05)
        raise AssertionError(f"PostgreSQL did not become ready on port {self.port}:\n{self._log()}")

    def _log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "(no server log)"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if self.as_server_user:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{self._log()}"
            )
        return result


def unavailable(reason: str) -> None:
    """Skip the test here, but fail on CI, which installs PostgreSQL."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the whole test session, stopped at the end."""
    reason = missing_reason()
    if reason is not None:
        unavailable(reason)
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    # not pytest's tmp_path: its parents are private to root, and the server user
    # must be able to reach its data directory
    base = Path(tempfile.mkdtemp(prefix="kyodo-pg-"))
    server = PostgresServer(base, bin_dir, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The DSN of the session's PostgreSQL server (superuser, database ``postgres``)."""
    return postgres_server.dsn
