"""Start `python -m rl.serve` as a child process on a free port, wait until it generates, stop it on exit.

The parent binds the port and the child inherits the listening socket (`--fd`), so no other process
can take the port between the choice and the serving (a free port found, released and bound again
later by the child could be).

    with EmbeddedServer(model_dir) as server:
        httpx.post(f"{server.url}/generate", json=...)

The child is stopped when the block exits (normally, on an error or on Ctrl-C), at interpreter exit,
and, on Linux, when the thread that started it dies (`rl.serve` asks the kernel for a SIGTERM then;
see `die_with_parent`).
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 300.0
PARENT_ENV = "RL_SERVE_PARENT_PID"


class ServerStartError(RuntimeError):
    """The server process exited or never became healthy; the message holds its log's tail."""


def die_with_parent() -> None:
    """Called by `python -m rl.serve` itself when PARENT_ENV names its parent: SIGTERM when the parent
    goes (Linux prctl PR_SET_PDEATHSIG), and exit at once if it is already gone. Set in the child,
    not through a preexec_fn, which is unsafe in a multithreaded (JAX) parent."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        sys.exit(f"rl.serve: parent process {parent} is gone")


class EmbeddedServer:
    def __init__(self, model_dir, *, port: int = 0, host: str = "127.0.0.1", extra_args=(), log_path=None,
                 startup_timeout: float = STARTUP_TIMEOUT_S, env: dict | None = None):
        self.model_dir, self.host = Path(model_dir), host
        self._socket: socket.socket | None = None
        self.port = port
        if not port:  # choose it now, so that url is known before start()
            self._socket = self._listen()
            self.port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.extra_args, self.startup_timeout, self.env = list(extra_args), startup_timeout, env
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="rl-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        key = self.extra_args[self.extra_args.index("--api-key") + 1] if "--api-key" in self.extra_args[:-1] else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _listen(self) -> socket.socket:
        """A socket listening on host:port (port 0: a free one), for the child to inherit."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no bar
            sock.bind((self.host, self.port))
            sock.listen(2048)
        except OSError as e:
            sock.close()
            raise ServerStartError(f"cannot listen on {self.host}:{self.port}: {e}") from e
        return sock

    def start(self) -> "EmbeddedServer":
        """Start the child; again after stop() or a crash, on the same port (refused meanwhile)."""
        sock, self._socket = self._socket or self._listen(), None
        argv = [sys.executable, "-m", "rl.serve", "--model", str(self.model_dir), "--host", self.host,
                "--port", str(self.port), "--fd", str(sock.fileno()), *self.extra_args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                pass_fds=(sock.fileno(),),
                                                env={**os.environ, **(self.env or {}), PARENT_ENV: str(os.getpid())})
        finally:
            sock.close()  # the child holds its own copy: the port closes when it exits
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"python -m rl.serve exited with status {self.process.returncode}:\n"
                                       f"{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health_generate", headers=self.headers, timeout=30).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise ServerStartError(f"{self.url} not healthy after {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {self.log_path})"

    def stop(self, timeout: float = 15.0) -> None:
        if self._socket is not None:  # never started
            self._socket.close()
            self._socket = None
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
