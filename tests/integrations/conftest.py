"""Fixtures of the framework bridges: CrewAI runs offline and reaches loopback only.

CrewAI's telemetry and tracing are switched off before anything imports it, and every test
here fails if code tried to open a socket to anything but a loopback address.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["OTEL_SDK_DISABLED"] = "true"
os.environ["CREWAI_TRACING_ENABLED"] = "false"
os.environ["CREWAI_TESTING"] = "true"

# CrewAI is a required test dependency (the ``crewai`` extra): a missing package fails the
# collection of this directory. Importing it emits an ImportWarning of its own, which must
# not become an error here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import crewai
    import crewai.events
    import crewai.llms.base_llm
    import crewai.tasks.task_output
    import crewai.tools  # noqa: F401

# CrewAI's own code reads its deprecated fields: those warnings are not this project's.
CREWAI_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai")


def _is_local(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # a Unix socket path
    host = str(address[0])
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Refuse (and record) every socket connection to a non-loopback address."""
    refused: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        if not _is_local(address):
            refused.append(address)
            raise OSError(errno.ENETUNREACH, f"tests reach loopback only, not {address!r}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _is_local(address):
            refused.append(address)
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield refused
    assert refused == [], f"code tried to reach the network: {refused}"
