"""Mitigator plugins by name.

Built in: ``log`` (the default). ExaBGP (FlowSpec / RTBH towards BGP routers) and nftables
(home router / CPE) will be ``exabgp`` and ``nftables`` once written: one line each in
:data:`BUILTIN`, imported only when selected (their dependencies stay optional).

Third-party plugins register an entry point in the ``dotsd.mitigators`` group naming a
:class:`~dotsd.mitigate.base.Mitigator` subclass (or any callable ``(config, report) ->
Mitigator``)::

    [project.entry-points."dotsd.mitigators"]
    acme = "acme_dots.mitigator:AcmeMitigator"

A built-in name wins over an entry point of the same name (a plugin cannot silently replace
``log``); such an entry point is logged and ignored.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final

from dotsd.defaults import DEFAULT_MITIGATOR
from dotsd.errors import LocalError
from dotsd.mitigate.base import FeedbackSink, Mitigator, MitigatorError

__all__ = [
    "BUILTIN",
    "DEFAULT",
    "GROUP",
    "PluginLoadError",
    "UnknownMitigatorError",
    "available",
    "create",
    "load",
]

_log = logging.getLogger("dotsd.mitigate")

GROUP: Final = "dotsd.mitigators"
DEFAULT: Final = DEFAULT_MITIGATOR
BUILTIN: Final[Mapping[str, str]] = {
    "log": "dotsd.mitigate.log:LogMitigator",
}

Factory = Callable[[Mapping[str, Any], FeedbackSink | None], Mitigator]


class UnknownMitigatorError(LocalError, LookupError):
    """No plugin has this name; the message lists the known ones."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown mitigator {name!r}; known: {', '.join(known) if known else '(none)'}"
        )


class PluginLoadError(MitigatorError):
    """A plugin exists by name but could not be imported or is not a mitigator."""


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in BUILTIN:
            _log.warning(
                "entry point %s = %s ignored: %r is a built-in mitigator",
                ep.name,
                ep.value,
                ep.name,
            )
        elif ep.name in found:
            _log.warning(
                "entry point %s = %s ignored: name taken by %s",
                ep.name,
                ep.value,
                found[ep.name].value,
            )
        else:
            found[ep.name] = ep
    return found


def available() -> list[str]:
    """Names of every mitigator: built-ins, then installed plugins, each sorted."""
    return sorted(BUILTIN) + sorted(_entry_points())


def load(name: str) -> Factory:
    """The factory (normally a class) registered as ``name``."""
    target: object
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginLoadError(
                f"mitigator {name!r}: cannot import {BUILTIN[name]}: {exc}"
            ) from exc
    else:
        ep = _entry_points().get(name)
        if ep is None:
            raise UnknownMitigatorError(name, available())
        try:
            target = ep.load()
        except Exception as exc:  # any error of a third-party module's import
            raise PluginLoadError(
                f"mitigator {name!r}: cannot load entry point {ep.value}: {exc}"
            ) from exc
    if not callable(target):
        raise PluginLoadError(f"mitigator {name!r}: {target!r} is not a class or factory")
    factory: Factory = target
    return factory


def create(
    name: str = DEFAULT,
    config: Mapping[str, Any] | None = None,
    *,
    report: FeedbackSink | None = None,
) -> Mitigator:
    """A new mitigator ``name`` with its ``config`` section and the server's feedback sink.

    Raises :class:`UnknownMitigatorError`, :class:`PluginLoadError`, or the plugin's
    :class:`~dotsd.mitigate.base.MitigatorConfigError`: all at startup, before serving.
    """
    factory = load(name)
    try:
        mitigator = factory({} if config is None else config, report)
    except MitigatorError:
        raise  # MitigatorConfigError: the plugin's own message
    except Exception as exc:  # a third-party constructor's bug: name the plugin
        raise PluginLoadError(
            f"mitigator {name!r}: {factory!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(mitigator, Mitigator):
        raise PluginLoadError(
            f"mitigator {name!r}: {factory!r} returned {type(mitigator).__name__}, "
            "not a dotsd.mitigate.base.Mitigator"
        )
    return mitigator
