"""Shared fixtures of the sandbox tests: one warm pool per pytest process, a secret in the
grader's environment, and a local TCP server that must never see a connection."""
import os
import socket
import uuid

import pytest

from sandbox import SandboxPool
from sandbox_helpers import SECRET_ENV

SECRET = "coderl-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def pool():
    os.environ[SECRET_ENV] = SECRET  # set before the zygotes start
    with SandboxPool(workers=1, time_limit=2.0, memory_mb=1024) as p:
        yield p


@pytest.fixture
def marker():
    """A unique name for files and strings a hostile program tries to create."""
    return "pwned_" + uuid.uuid4().hex[:12]


@pytest.fixture
def tcp_server():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()
