"""The fake LINE platform in its own process, and the handle the harness drives it with.

Run as a script, this module starts ``line_markread.testing.FakeLinePlatform``
on 127.0.0.1, prints one JSON line ``{"url": ..., "access_token": ...}`` and
then obeys one command per line on its standard input, answering one line on
its standard output:

``latency <seconds>``  set the response latency of every endpoint -> ``ok``
``count``              mark-as-read requests recorded since the last reset -> ``<n>``
``reset``              forget the recorded requests -> ``ok``
``quit`` or EOF        stop the fake and exit

The pipe is the control channel, so the benchmarked process never shares an
event loop (or a CPU time slice of one) with the server it measures against,
and the fake dies with its parent (EOF on stdin).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from types import TracebackType
from typing import IO

ACCESS_TOKEN = "bench-access-token"
_STARTUP_TIMEOUT = 30.0
_COMMAND_TIMEOUT = 30.0


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    """The child's main loop: one command per line until ``quit`` or EOF."""
    from line_markread.testing import FakeLinePlatform  # noqa: PLC0415  # child-only import

    platform = FakeLinePlatform(access_token=ACCESS_TOKEN, latency=0.0).start()
    try:
        print(json.dumps({"url": platform.url, "access_token": ACCESS_TOKEN}), file=stdout)
        stdout.flush()
        for line in stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "latency":
                platform.latency = float(argument)
                answer = "ok"
            elif command == "count":
                answer = str(len(platform.mark_requests()))
            elif command == "reset":
                platform.reset()
                answer = "ok"
            elif command == "quit":
                print("ok", file=stdout)
                stdout.flush()
                break
            else:
                answer = f"error unknown command {command!r}"
            print(answer, file=stdout)
            stdout.flush()
    finally:
        platform.stop()


class PlatformProcess:
    """A ``FakeLinePlatform`` running in a child process, driven over its stdin/stdout."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The child imports line_markread from the work tree even when it is not installed.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        hello = json.loads(self._read_line(_STARTUP_TIMEOUT))
        self.url: str = hello["url"]
        self.access_token: str = hello["access_token"]
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake platform must listen on 127.0.0.1, got {self.url}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read_line(self, timeout: float) -> str:
        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the fake platform process did not answer within {timeout}s")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the fake platform process exited ({self._process.poll()})")
        return line.strip()

    def _command(self, line: str) -> str:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()
        answer = self._read_line(_COMMAND_TIMEOUT)
        if answer.startswith("error"):
            raise RuntimeError(f"fake platform: {answer}")
        return answer

    def set_latency(self, seconds: float) -> None:
        self._command(f"latency {seconds!r}")

    def mark_count(self) -> int:
        return int(self._command("count"))

    def reset(self) -> None:
        self._command("reset")

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                self._command("quit")
            assert self._process.stdin is not None
            self._process.stdin.close()
            deadline = time.monotonic() + 10.0
            while self._process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait(timeout=10.0)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> PlatformProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
