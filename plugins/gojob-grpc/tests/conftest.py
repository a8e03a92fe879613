"""Fixtures for the gojob-grpc tests: real ``gojob serve`` processes, ``jobctl`` as a subprocess.

Every node a fixture started is stopped with SIGTERM at the end and must then exit 0, so every test
checks the clean shutdown too. grpc.aio runs on asyncio only: the async tests run on asyncio only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gojob_core.testing.servers import self_signed_certificate
from gojob_store_postgres.testing import postgres_server  # noqa: F401  (the session fixture: a node on PostgreSQL)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpc_nodes import Node, NodeFactory  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node on the memory store, shared by the tests that only need a node to talk to."""
    factory = NodeFactory(tmp_path_factory.mktemp("node"))
    try:
        yield factory(name="main")
    finally:
        factory.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))
