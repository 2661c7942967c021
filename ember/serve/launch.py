"""Start ``ember serve`` in a process of its own and wait until it is ready.

For benchmarks and tests that need the server as users run it (its own interpreter, signals,
exit status) rather than ``ServerThread`` in the same process:

>>> with launch_server("models", cache_dir="/tmp/engines") as srv:  # doctest: +SKIP
...     url = f"http://127.0.0.1:{srv.http_port}/v2/health/ready"
... # leaving the block sends SIGINT: the server answers every queued request, then exits

The server is started on free ports (``--http-port 0`` and so on); the ports it bound are read
from its start-up line (``ember serve: HTTP host:port, gRPC host:port, metrics host:port``,
logged by ``ember.serve.server.Server.start``) and it is ready once it logs ``ember serve: ready``.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ember.errors import EmberError

#: The start-up line with the bound ports.
PORTS_LINE = re.compile(r"HTTP [\w.:\[\]-]+:(-?\d+), gRPC [\w.:\[\]-]+:(-?\d+), metrics [\w.:\[\]-]+:(-?\d+)")
#: What the server logs once every model of the repository is loaded.
READY_MARK = "ember serve: ready"
#: ``python -m`` entry points that run the server: ``ember serve`` and ``python -m ember.serve``.
ENTRIES = {"ember.cli": ("ember.cli", "serve"), "ember.serve": ("ember.serve",)}

PathLike = Union[str, os.PathLike]


class ServeLaunchError(EmberError):
    """``ember serve`` exited before it was ready, did not become ready in time, or did not stop."""


class ServeProcess:
    """A running ``ember serve`` process: its ports, its log lines so far, and how to stop it.

    A context manager: leaving the block stops the server with SIGINT (it drains its queues) and
    kills it if it has not exited within ``stop_timeout`` seconds.
    """

    def __init__(self, proc: subprocess.Popen, echo: Optional[Callable[[str], None]] = None,
                 stop_timeout: float = 120.0) -> None:
        self.proc = proc
        self.ports: dict[str, int] = {}
        self.lines: list[str] = []
        self.stop_timeout = stop_timeout
        self._echo = echo
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="ember-serve-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self._echo is not None:
                self._echo(line)
            m = PORTS_LINE.search(line)
            if m:
                self.ports.update(http=int(m.group(1)), grpc=int(m.group(2)), metrics=int(m.group(3)))
            if READY_MARK in line:
                self._ready.set()

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    @property
    def grpc_port(self) -> int:
        return self.ports["grpc"]

    @property
    def metrics_port(self) -> int:
        return self.ports["metrics"]

    def output(self) -> str:
        """The server's log (stderr and stdout) so far."""
        return "".join(self.lines)

    def wait_ready(self, timeout: Optional[float] = 120.0) -> ServeProcess:
        """Blocks until the server logs that it is ready (``timeout`` None: no limit).

        Raises ``ServeLaunchError`` with the server's log if it exits first, or (after killing
        it) if it is not ready within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise ServeLaunchError(
                    f"ember serve exited with status {self.proc.returncode} before it was ready; "
                    f"its log:\n{self.output()}")
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise ServeLaunchError(
                    f"ember serve was not ready after {timeout:g} s (killed it); raise the timeout "
                    f"if its models take longer to build; its log:\n{self.output()}")
        return self

    def wait(self, timeout: Optional[float] = None) -> int:
        """Waits for the process to exit and for its last log lines; returns its exit status.

        Raises ``subprocess.TimeoutExpired`` if it is still running after ``timeout`` seconds.
        """
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: Optional[float] = None) -> int:
        """Sends ``sig`` (SIGINT or SIGTERM: both drain the queues, then exit) and waits.

        Returns the exit status (0: clean stop). If the server has not exited within ``timeout``
        seconds (default: ``stop_timeout``) it is killed and ``ServeLaunchError`` is raised.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServeLaunchError(f"ember serve did not stop within {timeout:g} s of "
                                   f"{signal.Signals(sig).name} (killed it); its log:\n{self.output()}") from None

    def kill(self) -> None:
        """Kills the process at once (no draining) and reaps it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self.proc.poll() is not None:
            self.wait()
        elif exc_type is None:
            self.stop()
        else:  # already failing: stop, but let the original error through
            try:
                self.stop()
            except ServeLaunchError:
                pass


def serve_command(repository: PathLike, *, entry: str = "ember.serve", cache_dir: Optional[PathLike] = None,
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The command line that runs ``ember serve`` on free ports with this interpreter."""
    if entry not in ENTRIES:
        raise ValueError(f"unknown ember serve entry {entry!r}; use one of {sorted(ENTRIES)}")
    cmd = [sys.executable, "-m", *ENTRIES[entry], str(repository),
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    return cmd + list(extra_args)


def launch_server(repository: PathLike, *, entry: str = "ember.serve", cache_dir: Optional[PathLike] = None,
                  extra_args: Sequence[str] = (), ready_timeout: Optional[float] = 120.0,
                  echo: Optional[Callable[[str], None]] = None, cwd: Optional[PathLike] = None,
                  stop_timeout: float = 120.0) -> ServeProcess:
    """Starts ``ember serve REPOSITORY`` on free ports and returns it once it is ready.

    ``entry``: ``"ember.serve"`` (``python -m ember.serve``) or ``"ember.cli"`` (``python -m
    ember.cli serve``). ``extra_args``: more ``ember serve`` options. ``echo`` is called with every
    log line as it arrives. The child imports the same ``ember`` package as this process.
    Raises ``ServeLaunchError`` (with the server's log) if it exits or is not ready in time.
    """
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(serve_command(repository, entry=entry, cache_dir=cache_dir, extra_args=extra_args),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=cwd, env=env)
    return ServeProcess(proc, echo=echo, stop_timeout=stop_timeout).wait_ready(ready_timeout)
