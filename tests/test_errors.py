"""One root for every dotsd exception (dotsd/errors.py): each class defined in the package is
a DotsdError and says whose fault it is, LocalError (ours) or PeerError (the peer's)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import dotsd
from dotsd.errors import DotsdError, LocalError, PeerError
from dotsd.model.errors import ModelError

# Layer bases whose subclasses span both kinds, so that they choose none themselves (as h11's
# ProtocolError): the data model's errors are the peer's (a body that does not decode or
# validate) except EncodeError (our own data that cannot be encoded, 5.00).
MIXED_BASES = {ModelError}


def _modules() -> list[ModuleType]:
    modules = []
    for info in pkgutil.walk_packages(dotsd.__path__, "dotsd."):
        if info.name == "dotsd.__main__":  # runs the command line when imported
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError:
            if info.name.startswith("dotsd._speedups."):  # the C accelerators are optional
                continue
            raise
    return modules


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in _modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[name] for name in sorted(found)]


CLASSES = _exception_classes()


def test_the_walk_finds_the_package_exceptions() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"DotsdError", "LocalError", "PeerError", "SignalError", "StoreError",
            "LocalProtocolError", "InvalidTransition", "InvalidSessionTransition"} <= names
    assert len(CLASSES) >= 45


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_exception_is_rooted_and_of_one_kind(cls: type[BaseException]) -> None:
    assert issubclass(cls, DotsdError)
    if cls in (DotsdError, LocalError, PeerError):
        return
    kinds = [k for k in (LocalError, PeerError) if issubclass(cls, k)]
    if cls in MIXED_BASES:
        assert kinds == []
        subclasses = [c for c in CLASSES if c is not cls and issubclass(c, cls)]
        assert any(issubclass(c, LocalError) for c in subclasses)
        assert any(issubclass(c, PeerError) for c in subclasses)
    else:
        assert len(kinds) == 1, f"{cls.__qualname__} is {kinds}"


@pytest.mark.parametrize(("name", "kind"), [
    ("dotsd.signal.session.InvalidSessionTransition", LocalError),
    ("dotsd.signal.lifecycle.InvalidTransition", LocalError),
    ("dotsd.coap.codec.LocalProtocolError", LocalError),
    ("dotsd.coap.tcp.MessageTooLargeError", LocalError),
    ("dotsd.model.errors.EncodeError", LocalError),
    ("dotsd.store.base.StoreError", LocalError),
    ("dotsd.coap.codec.MessageFormatError", PeerError),
    ("dotsd.model.errors.ValidationError", PeerError),
    ("dotsd.signal.errors.SignalError", PeerError),
    ("dotsd.agents.dial.DialError", PeerError),
])
def test_kinds_say_whose_fault(name: str, kind: type[DotsdError]) -> None:
    module, _, qualname = name.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), qualname), kind)


@pytest.mark.parametrize(("name", "builtin"), [
    ("dotsd.signal.session.InvalidSessionTransition", RuntimeError),
    ("dotsd.dtls.context.DtlsConfigError", ValueError),
    ("dotsd.cli.settings.ConfigFileError", ValueError),
    ("dotsd.mitigate.base.MitigatorConfigError", ValueError),
    ("dotsd.mitigate.registry.UnknownMitigatorError", LookupError),
    ("dotsd.agents.dial.DialError", ConnectionError),
    ("dotsd.transport.dtls.DtlsHandshakeError", ConnectionError),
])
def test_builtin_bases_are_kept(name: str, builtin: type[Exception]) -> None:
    module, _, qualname = name.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), qualname), builtin)
