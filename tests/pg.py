"""A real, throwaway PostgreSQL server for the durable-queue tests.

``make test`` installs Debian's ``postgresql`` package where it is missing
(see the Makefile); this module only runs it: ``initdb`` on a temporary data
directory and ``postgres`` listening on a unix socket in that directory (no
TCP port to collide with), trust authentication, fsync off.  ``initdb`` and
``postgres`` refuse to run as root, so as root they run as the unprivileged
``postgres`` user the package creates (``Popen(user=, group=)``).

Nothing here skips: a server that cannot start fails the test with the reason
(its log included), so a machine without PostgreSQL cannot pass silently.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

PG_BIN_ENV = "LINE_MARKREAD_PG_BIN"
"""A folder holding ``initdb`` and ``postgres``, when they are not where Debian puts them."""

START_TIMEOUT = 60.0
"""Generous: initdb and the first start on a loaded 2-core machine."""


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found or started; the message says why."""


def find_bin() -> Path:
    """The folder with ``initdb`` and ``postgres``: the variable, Debian's newest, or PATH."""
    given = os.environ.get(PG_BIN_ENV)
    candidates = [given] if given else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(str(Path(on_path).parent))
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "postgres").is_file():
            return Path(folder)
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, postgres) found: install Debian's 'postgresql' "
        f"package (make test does it when run as root) or set {PG_BIN_ENV}"
    )


def _owner() -> dict[str, Any]:
    """Popen's ``user=``/``group=`` that run the server unprivileged, when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd  # noqa: PLC0415  # POSIX only, like everything here

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root and no 'postgres' user exists (Debian's postgresql package creates "
            "it): initdb refuses to run as root"
        ) from None
    return {"user": entry.pw_name, "group": entry.pw_gid}


class PostgresServer:
    """One server: ``start()``, ``stop()`` (and ``start()`` again), ``url(dbname)``."""

    def __init__(self) -> None:
        self.bin = find_bin()
        self._owner = _owner()
        # /tmp: short (a unix socket path has ~100 bytes) and reachable by the server's user,
        # whatever $TMPDIR says.
        base = "/tmp" if os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="line-markread-pg-", dir=base))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.log = self.root / "server.log"
        self.port = 5432  # only names the socket file (.s.PGSQL.5432) inside our own folder
        self._process: subprocess.Popen[bytes] | None = None
        os.chmod(self.root, 0o777)  # the server's user writes its socket and log here
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "--no-sync", "-E", "UTF8"])  # fmt: skip

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
            **self._owner,
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(argv[:1])} failed ({result.returncode}): {result.stderr[-2000:]}"
            )

    def start(self) -> None:
        log = self.log.open("ab")
        self._process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data),
             "-k", str(self.socket_dir), "-p", str(self.port), "-c", "listen_addresses=",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=log,
            stderr=subprocess.STDOUT,
            **self._owner,
        )  # fmt: skip
        log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        import psycopg  # noqa: PLC0415  # the extra; only these tests need it

        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise PostgresUnavailable(
                    f"postgres exited with {self._process.returncode}: {self.log_tail()}"
                )
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=5):
                    return
            except psycopg.OperationalError as e:
                last = e
                time.sleep(0.05)  # polling a server's readiness: nothing to wait on instead
        raise PostgresUnavailable(f"postgres not ready after {START_TIMEOUT}s: {last}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Fast shutdown (SIGINT: connections closed, like a managed database's failover)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(2)
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def url(self, dbname: str) -> str:
        query = urllib.parse.urlencode({"host": str(self.socket_dir), "port": str(self.port)})
        return f"postgresql://postgres@/{dbname}?{query}"

    def create_database(self, name: str) -> str:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a name we made, not input
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
