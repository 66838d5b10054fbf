"""`python -m rl.serve` as a command and EmbeddedServer's failure path (its success path starts the
server every other test_serve_* module uses)."""
import socket
import subprocess
import sys
import time

import pytest

from rl.rollout.embedded import EmbeddedServer, ServerStartError


def test_help_and_sglang_delegation(tiny_model_dir):
    help_ = subprocess.run([sys.executable, "-m", "rl.serve", "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "--max-running-requests" in help_.stdout
    assert "(default: None)" not in help_.stdout  # the help says what leaving it out means
    dry = subprocess.run([sys.executable, "-m", "rl.serve", "--engine", "sglang", "--model", str(tiny_model_dir),
                          "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "sglang.launch_server" in dry.stdout, dry.stderr


def test_a_folder_without_a_model_fails_fast_with_the_log(tmp_path):
    start = time.monotonic()
    with pytest.raises(ServerStartError, match="config.json"):
        with EmbeddedServer(tmp_path, log_path=tmp_path / "serve.log"):
            pass
    assert time.monotonic() - start < 60 and "config.json" in (tmp_path / "serve.log").read_text()


def test_the_port_is_held_from_construction_to_stop(tmp_path):
    """No other process can take the chosen port before the child serves it (the child inherits it)."""
    server = EmbeddedServer(tmp_path)
    assert server.url.endswith(f":{server.port}") and server.port > 0
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", server.port))
    server.stop()
    with socket.socket() as other:
        other.bind(("127.0.0.1", server.port))


def test_an_fd_that_is_not_a_listening_socket_is_named(tmp_path):
    with open(tmp_path / "file", "wb") as f:
        fd = f.fileno()
        out = subprocess.run([sys.executable, "-m", "rl.serve", "--model", str(tmp_path), "--fd", str(fd)],
                             pass_fds=(fd,), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"error: --fd {fd}: " in out.stderr and "non-socket" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_stop_terminates_the_child_and_is_idempotent(tmp_path):
    server = EmbeddedServer(tmp_path)
    server.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child = server.process
    server.stop(timeout=5)
    server.stop()
    assert child.poll() is not None and server.process is None


@pytest.mark.parametrize("argv", [["--max-running-requests", "0"], ["--context-length", "-5"]])
def test_sizes_below_one_are_refused_at_start(argv, capsys):
    """--max-running-requests 0 served /health while every /generate waited forever."""
    from rl.serve import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", *argv])
    assert argv[0] in capsys.readouterr().err
