"""YANG validation of DOTS message bodies with yangson.

The official YANG modules live in ``yang_modules/`` next to this file, copied byte for byte
from the spec pack by ``scripts/gen_cbor_keys.py``. They are the IETF's (and IANA's) normative
data that DOTS messages must conform to — data, not code — so they are shipped verbatim rather
than transcribed.

Signal channel messages are YANG *structures* (RFC 8791 ``sx:structure``): ``dots-signal`` of
``ietf-dots-signal-channel`` (RFC 9132 §5.3) and ``dots-telemetry`` of ``ietf-dots-telemetry``
(RFC 9244 §11.1), extended with ``sx:augment-structure`` by call home (RFC 9066 §6.1), signal
control (RFC 9133 §5) and robust transmission (RFC 9362). yangson silently ignores extension
statements it does not know, so a structure would vanish from its schema. The trick used here:
after yangson has parsed the modules and before it builds the schema tree, the parsed statements
are rewritten **in memory** — ``sx:structure X`` becomes ``container X`` and
``sx:augment-structure P`` becomes ``augment P`` — so the structure's content is validated as an
ordinary subtree. Two further in-memory adjustments are made, each with its rule:

* leafrefs inside structure modules get ``require-instance false``: a message is not a datastore
  and the referenced ACLs live in the DOTS data channel (RFC 8783), so the referential check
  (RFC 9133 §3.2.1) belongs to the server's store, not to message validation;
* the IANA-maintained ``iana-dots-signal-channel`` module in the pack (revision 2021-09-02) lacks
  the conflict-cause codes registered later (4, RFC 9066 §7.2; 5, RFC 9244 §13.2); RFC 9132 §10.6
  says every registry addition adds an ``enum`` to that module, so they are added.

A DOTS message body names its case of the structure's top-level choice as its only member, e.g.
``{"ietf-dots-signal-channel:mitigation-scope": {"scope": [...]}}`` (RFC 9132 §4.4.1.1,
Table 5 key 1): the choice ``message-type`` has the case ``mitigation-scope`` whose nodes are the
object's content. It is validated as ``{"ietf-dots-signal-channel:dots-signal": {"scope": ...}}``
and the content is checked to belong to that case.

The ``choice direction`` of the modules (cases ``server-to-client-only`` and
``client-to-server-only``, RFC 9132 §5.3) is enforced by :func:`validate_request` /
:func:`validate_response` (e.g. ``status`` in a DOTS client's PUT is rejected, RFC 9132 §4.4.1).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from yangson import DataModel  # type: ignore[import-untyped]
from yangson.datatype import Decimal64Type  # type: ignore[import-untyped]
from yangson.enumerations import ContentType, ValidationScope  # type: ignore[import-untyped]
from yangson.exceptions import YangsonException  # type: ignore[import-untyped]
from yangson.schemanode import (  # type: ignore[import-untyped]
    CaseNode,
    ChoiceNode,
    InternalNode,
    ListNode,
)
from yangson.statement import Statement  # type: ignore[import-untyped]

from dotsd.model.errors import ValidationError

__all__ = [
    "MODULE_DIR",
    "Direction",
    "MessageKind",
    "YangValidator",
    "message_kinds",
    "validate",
    "validate_request",
    "validate_response",
    "validator",
]

MODULE_DIR: Final = Path(__file__).with_name("yang_modules")
"""Verbatim copies of the official modules (see the module docstring)."""

STRUCTURE_EXT_MODULE: Final = "ietf-yang-structure-ext"  # RFC 8791 §6

# RFC 9132 §10.6 (IANA maintenance of iana-dots-signal-channel): registry entries added after
# the stored revision, as (typedef, label, value, source).
IANA_REGISTRY_ADDITIONS: Final[tuple[tuple[str, str, int, str], ...]] = (
    ("conflict-cause", "request-rejected-legitimate-traffic", 4, "RFC 9066 §7.2"),
    ("conflict-cause", "overlapping-pipes", 5, "RFC 9244 §13.2"),
)
IANA_MODULE: Final = "iana-dots-signal-channel"

# Maximum nesting of a JSON-shaped instance accepted for validation (DOTS bodies nest < 15).
MAX_DEPTH: Final = 48

JSONValue = Any
"""A JSON-shaped value: dict[str, ...], list, str, int, float, bool or None."""


class Direction(Enum):
    """Who sends the message, per the ``choice direction`` of the DOTS modules (RFC 9132 §5.3).

    DOTS roles, not CoAP roles: a heartbeat PUT from a DOTS server to a DOTS client is
    SERVER_TO_CLIENT although it is a CoAP request (RFC 9132 §4.7).
    """

    CLIENT_TO_SERVER = "client-to-server"
    SERVER_TO_CLIENT = "server-to-client"

    @property
    def forbidden_case(self) -> str:
        """The case whose nodes must not appear in a message sent in this direction."""
        if self is Direction.CLIENT_TO_SERVER:
            return "server-to-client-only"
        return "client-to-server-only"


@dataclass(frozen=True, slots=True)
class MessageKind:
    """A kind of signal channel message: a case of a structure's top-level choice."""

    member: str  # the body's only member, e.g. "ietf-dots-signal-channel:mitigation-scope"
    module: str  # "ietf-dots-signal-channel"
    structure: str  # "dots-signal"
    case: str  # "mitigation-scope"


# --------------------------------------------------------------------------------------------
# Building the data model


def _module_files(module_dir: Path) -> list[tuple[str, str, Path]]:
    found = []
    for path in sorted(module_dir.glob("*@*.yang")):
        name, _, rev = path.stem.partition("@")
        found.append((name, rev, path))
    return found


_NAMESPACE_RE = re.compile(r"^\s*namespace\s+\"?([^\";\s]+)", re.MULTILINE)
_FEATURE_RE = re.compile(r"^\s*feature\s+([A-Za-z_][\w.-]*)", re.MULTILINE)


def _yang_library(module_dir: Path) -> dict[str, Any]:
    """RFC 7895 module list for yangson: every module implemented, every feature enabled."""
    modules = []
    for name, rev, path in _module_files(module_dir):
        text = path.read_text(encoding="utf-8")
        ns = _NAMESPACE_RE.search(text)
        if ns is None:
            raise ValueError(f"{path}: no namespace statement")
        modules.append(
            {
                "name": name,
                "revision": rev,
                "namespace": ns.group(1),
                "conformance-type": "implement",
                "feature": _FEATURE_RE.findall(text),
            }
        )
    if not modules:
        raise FileNotFoundError(f"no YANG modules in {module_dir}")
    return {"ietf-yang-library:modules-state": {"module-set-id": "dotsd", "module": modules}}


def _new_stmt(parent: Any, keyword: str, argument: str) -> Any:
    stmt = Statement(keyword, argument)
    stmt.superstmt = parent
    parent.substatements.append(stmt)
    return stmt


def _walk_stmts(stmt: Any) -> Iterator[Any]:
    yield stmt
    for sub in stmt.substatements:
        yield from _walk_stmts(sub)


def _rewrite_module(module: Any) -> list[str]:
    """Apply the in-memory adjustments of the module docstring; return structure names."""
    structures: list[str] = []
    if module.argument == IANA_MODULE:
        _add_registry_enums(module)
    sx_prefix = None
    for sub in module.substatements:
        if sub.keyword == "import" and sub.argument == STRUCTURE_EXT_MODULE:
            sx_prefix = sub.find1("prefix").argument
    if sx_prefix is None:
        return structures
    for sub in module.substatements:
        if sub.prefix != sx_prefix:
            continue
        if sub.keyword == "structure":  # RFC 8791 §3
            structures.append(sub.argument)
            sub.prefix, sub.keyword = None, "container"
        elif sub.keyword == "augment-structure":  # RFC 8791 §4
            sub.prefix, sub.keyword = None, "augment"
    for stmt in _walk_stmts(module):
        if (
            stmt.prefix is None
            and stmt.keyword == "type"
            and stmt.argument == "leafref"
            and stmt.find1("require-instance") is None
        ):
            _new_stmt(stmt, "require-instance", "false")
    return structures


def _add_registry_enums(module: Any) -> None:
    for typedef_name, label, value, source in IANA_REGISTRY_ADDITIONS:
        typedef = module.find1("typedef", typedef_name)
        if typedef is None:
            continue
        enum_type = typedef.find1("type", "enumeration")
        if enum_type is None or enum_type.find1("enum", label) is not None:
            continue
        enum = _new_stmt(enum_type, "enum", label)
        _new_stmt(enum, "value", str(value))
        _new_stmt(enum, "reference", source)


class _DotsDataModel(DataModel):  # type: ignore[misc]
    """yangson DataModel whose parsed statements are adjusted before the schema is built."""

    structures: list[tuple[str, str]]

    def _build_schema(self) -> None:
        self.structures = []
        for (name, _rev), mdata in self.schema_data.modules.items():
            for structure in _rewrite_module(mdata.statement):
                self.structures.append((name, structure))
        super()._build_schema()


# --------------------------------------------------------------------------------------------
# Validation


def _split_member(member: str, default_ns: str) -> tuple[str, str]:
    """RFC 7951 §4: ``module:name`` or ``name`` (namespace of the parent)."""
    module, sep, name = member.partition(":")
    if sep:
        return name, module
    return member, default_ns


def _check_json_shape(value: JSONValue, path: str, depth: int = 0) -> None:
    """Reject anything that is not JSON-shaped before handing it to yangson."""
    if depth > MAX_DEPTH:
        raise ValidationError(f"nested deeper than {MAX_DEPTH} levels", path=path)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"member name {key!r} is not a string", path=path or "/")
            _check_json_shape(item, f"{path}/{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_shape(item, f"{path}/{index}", depth + 1)
    elif value is not None and not isinstance(value, str | int | float):
        raise ValidationError(f"{type(value).__name__} is not a JSON value", path=path or "/")


@functools.cache
def _decimal_re(fraction_digits: int) -> re.Pattern[str]:
    return re.compile(rf"-?[0-9]+(\.[0-9]{{1,{fraction_digits}}})?")


_BRACED = re.compile(r"^\{(?P<path>[^}]*)\}\s*(?P<rest>.*)$", re.DOTALL)


def _describe(exc: Exception) -> tuple[str | None, str]:
    """(instance path, message) from a yangson exception."""
    text = str(exc)
    kind = type(exc).__name__
    match = _BRACED.match(text)
    if match:
        return match["path"], match["rest"] or kind
    if kind == "RawMemberError":
        return text, "member not defined by the YANG modules"
    return None, f"{kind}: {text}"


class YangValidator:
    """Validates JSON-shaped DOTS bodies against the YANG modules of ``module_dir``."""

    def __init__(self, module_dir: Path = MODULE_DIR) -> None:
        library = json.dumps(_yang_library(module_dir))
        self._dm = _DotsDataModel(library, [str(module_dir)])
        self._kinds: dict[str, MessageKind] = {}
        self._case_nodes: dict[str, Any] = {}
        self._structure_nodes: dict[tuple[str, str], Any] = {}
        for module, structure in self._dm.structures:
            node = self._dm.schema.get_data_child(structure, module)
            self._structure_nodes[(module, structure)] = node
            for child in node.children:
                if not isinstance(child, ChoiceNode):
                    continue
                for case in child.children:
                    if isinstance(case, CaseNode):
                        member = f"{module}:{case.name}"
                        self._kinds[member] = MessageKind(member, module, structure, case.name)
                        self._case_nodes[member] = case

    @property
    def message_kinds(self) -> Mapping[str, MessageKind]:
        """Top-level member name → message kind, e.g. ``ietf-dots-telemetry:telemetry-setup``."""
        return self._kinds

    @property
    def structure_roots(self) -> Mapping[tuple[str, str], Any]:
        """(module, structure) → yangson schema node of the structure (used by the generator)."""
        return self._structure_nodes

    def validate(
        self,
        instance: Mapping[str, JSONValue],
        *,
        direction: Direction | None = None,
        path: str | None = None,
    ) -> MessageKind | None:
        """Validate ``instance``; raise :class:`ValidationError` with a path-qualified message.

        * Signal channel body (empty, or with a member naming a message kind; it must have
          exactly one): validated against the structure; returns the :class:`MessageKind`.
        * Otherwise a data tree (DOTS data channel, RFC 8783): with ``path`` (a RESTCONF data
          resource, e.g. ``ietf-dots-data-channel:dots-data/dots-client=abc``) the body is the
          content of that resource, as in a POST to it or a GET response of its child; without
          it the body is a whole datastore. Returns None.

        ``direction`` enables the direction rules; for data trees CLIENT_TO_SERVER means only
        configuration data is allowed (RFC 8040 §4.4/§4.5: a client writes config data).
        """
        _check_json_shape(instance, "")
        if not isinstance(instance, Mapping):
            raise ValidationError("a message body must be a JSON object", path="/")
        if path is None and (not instance or any(m in self._kinds for m in instance)):
            if len(instance) != 1 or next(iter(instance)) not in self._kinds:
                raise ValidationError(
                    "a signal channel body has exactly one member, one of "
                    f"{sorted(self._kinds)}; got {sorted(instance)}",
                    path="/",
                )
            ((member, content),) = instance.items()
            kind = self._kinds[member]
            self._validate_message(kind, content, direction)
            return kind
        self._validate_tree(instance, direction, path)
        return None

    # -- signal channel structures --------------------------------------------------------

    def _validate_message(
        self, kind: MessageKind, content: JSONValue, direction: Direction | None
    ) -> None:
        top = f"/{kind.member}"
        if not isinstance(content, Mapping):
            raise ValidationError("expected a JSON object", path=top)
        root_member = f"{kind.module}:{kind.structure}"
        self._run_yangson({root_member: content}, ContentType.all, f"/{root_member}", top)
        snode = self._structure_nodes[(kind.module, kind.structure)]
        for member in content:
            child = snode.get_data_child(*_split_member(member, snode.ns))
            if child is None or not self._has_ancestor(child, self._case_nodes[kind.member]):
                raise ValidationError(
                    f"not part of the '{kind.case}' message (RFC 9132 §5.3 choice message-type)",
                    path=f"{top}/{member}",
                )
        # The member name selects the case, so its mandatory nodes are required even when the
        # content is empty (YANG alone would see no case selected, RFC 7950 §7.9.4).
        for child in self._case_nodes[kind.member].children:
            if getattr(child, "mandatory", False) and not isinstance(child, ChoiceNode):
                qualified = child.name if child.ns == snode.ns else f"{child.ns}:{child.name}"
                if qualified not in content:
                    raise ValidationError(f"mandatory '{qualified}' is missing", path=top)
        self._strict_walk(snode, content, top, direction)

    @staticmethod
    def _has_ancestor(node: Any, ancestor: Any) -> bool:
        parent = node.parent
        while parent is not None:
            if parent is ancestor:
                return True
            parent = parent.parent
        return False

    @staticmethod
    def _under_case(node: Any, stop: Any, case_name: str) -> bool:
        parent = node.parent
        while parent is not None and parent is not stop:
            if isinstance(parent, CaseNode) and parent.name == case_name:
                return True
            parent = parent.parent
        return False

    def _strict_walk(
        self, snode: Any, value: JSONValue, path: str, direction: Direction | None
    ) -> None:
        """Checks yangson does not make, walking the instance along the schema:

        * RFC 9132 §5.3 ``choice direction``: nodes of the other side's case are not allowed;
        * decimal64 values have at most fraction-digits digits after the point (RFC 7950 §9.3;
          yangson would round "2.001" to 2.00) and use the plain lexical form (RFC 7950 §9.3.1).
        """
        if not isinstance(value, Mapping):
            return
        forbidden = direction.forbidden_case if direction is not None else None
        for member, item in value.items():
            child = snode.get_data_child(*_split_member(member, snode.ns))
            if child is None:
                continue
            here = f"{path}/{member}"
            if forbidden is not None and self._under_case(child, snode, forbidden):
                sender = "DOTS client" if direction is Direction.CLIENT_TO_SERVER else "DOTS server"
                raise ValidationError(
                    f"'{child.name}' is {forbidden} (RFC 9132 §5.3): not allowed from a {sender}",
                    path=here,
                )
            if isinstance(child, ListNode) and isinstance(item, list):
                for index, entry in enumerate(item):
                    self._strict_walk(child, entry, f"{here}/{index}", direction)
            elif isinstance(child, InternalNode):
                self._strict_walk(child, item, here, direction)
            elif isinstance(child.type, Decimal64Type):
                for text in item if isinstance(item, list) else [item]:
                    digits = child.type.fraction_digits
                    if not (isinstance(text, str) and _decimal_re(digits).fullmatch(text)):
                        raise ValidationError(
                            f"{text!r} is not a decimal64 with {digits} fraction digits",
                            path=here,
                        )

    # -- data trees ------------------------------------------------------------------------

    def _validate_tree(
        self, instance: Mapping[str, JSONValue], direction: Direction | None, path: str | None
    ) -> None:
        raw = self._wrap(path, instance) if path else instance
        ctype = ContentType.config if direction is Direction.CLIENT_TO_SERVER else ContentType.all
        self._run_yangson(raw, ctype, None, None)
        self._strict_walk(self._dm.schema, raw, "", direction)

    def _wrap(self, path: str, body: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
        """Embed ``body`` in the ancestors named by a RESTCONF data resource path (RFC 8040
        §3.5.3: ``module:node/list=key1,key2/...``)."""
        segments = [s for s in path.strip("/").split("/") if s]
        if segments[:2] == ["restconf", "data"]:
            segments = segments[2:]
        node = self._dm.schema
        ns: str | None = None
        chain: list[tuple[str, Any, list[str] | None]] = []
        for segment in segments:
            ident, eq, keys = segment.partition("=")
            name, module = _split_member(unquote(ident), ns or "")
            if not module:
                raise ValidationError("the first path segment must be module-qualified", path=path)
            child = node.get_data_child(name, module)
            if child is None or not isinstance(child, InternalNode):
                raise ValidationError(f"no container or list '{ident}'", path=path)
            if isinstance(child, ListNode) != bool(eq):
                raise ValidationError(f"'{ident}': list keys given/missing", path=path)
            member = name if module == ns else f"{module}:{name}"
            key_values = [unquote(k) for k in keys.split(",")] if eq else None
            chain.append((member, child, key_values))
            node, ns = child, module
        content: dict[str, JSONValue] = {}
        for member, value in body.items():
            name, module = _split_member(member, ns or "")
            content[name if module == ns else member] = value
        for member, snode, key_values in reversed(chain):
            if key_values is None:
                content = {member: content}
                continue
            if len(key_values) != len(snode.keys):
                raise ValidationError(f"'{member}' needs {len(snode.keys)} key(s)", path=path)
            entry: dict[str, JSONValue] = {}
            for (key_name, key_ns), text in zip(snode.keys, key_values, strict=True):
                leaf = snode.get_child(key_name, key_ns)
                try:
                    entry[key_name] = leaf.type.to_raw(leaf.type.parse_value(text))
                except (YangsonException, ValueError, TypeError) as exc:
                    raise ValidationError(f"bad key {text!r}: {exc}", path=path) from None
            entry.update(content)
            content = {member: [entry]}
        return content

    # -- yangson ---------------------------------------------------------------------------

    def _run_yangson(
        self, raw: Mapping[str, JSONValue], ctype: Any, internal: str | None, shown: str | None
    ) -> None:
        try:
            inst = self._dm.from_raw(raw)
            inst.validate(ValidationScope.all, ctype)
        except (YangsonException, ValueError, TypeError, ArithmeticError, LookupError) as exc:
            where, message = _describe(exc)
            if where is not None and internal is not None and shown is not None:
                where = shown + where[len(internal) :] if where.startswith(internal) else where
            raise ValidationError(message, path=where) from None


# --------------------------------------------------------------------------------------------
# Module-level API (one shared validator, built on first use: ~0.2 s)

_lock = threading.Lock()
_default: YangValidator | None = None


def validator() -> YangValidator:
    """The shared validator over :data:`MODULE_DIR`."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = YangValidator()
    return _default


def message_kinds() -> Mapping[str, MessageKind]:
    return validator().message_kinds


def validate(
    instance: Mapping[str, JSONValue],
    *,
    direction: Direction | None = None,
    path: str | None = None,
) -> MessageKind | None:
    """See :meth:`YangValidator.validate`."""
    return validator().validate(instance, direction=direction, path=path)


def validate_request(
    instance: Mapping[str, JSONValue], *, path: str | None = None
) -> MessageKind | None:
    """Validate a body sent by a DOTS client (mitigation request, efficacy update, session
    configuration PUT, telemetry PUT, Call Home redirect, data channel POST/PUT)."""
    return validate(instance, direction=Direction.CLIENT_TO_SERVER, path=path)


def validate_response(
    instance: Mapping[str, JSONValue], *, path: str | None = None
) -> MessageKind | None:
    """Validate a body sent by a DOTS server (responses, notifications, 5.03 redirection)."""
    return validate(instance, direction=Direction.SERVER_TO_CLIENT, path=path)
