"""Fixtures shared by the test files.

- ``pki``: the test PKI (``dotsd.pki.init_pki``: a CA, ``server.pem`` and ``client.pem``),
  made once per session. Tests only read it; one that needs another client certificate gets
  it from :func:`support.pki.issued_client`, which issues each name once. A test that changes
  or replaces a PKI makes its own (tests/test_pki.py).
- ``rogue_pki``: a second PKI of its own CA: its certificates are refused by ``pki``'s peers.
- ``restore_logging``: the root logger's level and handlers as they were before the test (the
  CLI configures logging when it runs in process).

The helpers the tests import are in the package ``support`` (tests/support).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from dotsd.pki import PkiPaths, init_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki") / "pki")


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("rogue") / "pki")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
