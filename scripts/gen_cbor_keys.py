#!/usr/bin/env python3
"""Generate the DOTS signal channel CBOR key table and refresh the shipped YANG modules.

Inputs (the spec pack, ``shared/spec`` beside the repository or ``$DOTS_SPEC_DIR``):

* ``cbor-keys.tsv``: every CBOR key of RFC 9132 §6 Table 5, RFC 9066 §6.2 Table 1, RFC 9133
  §3.2.1 Table 1, RFC 9244 §12 Table 3 and RFC 9362 §4 Table 2 (name, key, major type, ...);
* ``yang/*.yang``: the official modules. They are copied byte for byte (checked against the
  pack's SHA256SUMS) into ``src/dotsd/model/yang_modules/``, and loaded with
  :mod:`dotsd.model.yang` to find, for every parameter, its node kind and value type (enum labels,
  fraction digits, integer bounds) as the structures actually use it.

Output: ``src/dotsd/model/_cbor_key_table.py`` (committed; the package never reads the pack).

Usage: ``.venv/bin/python scripts/gen_cbor_keys.py [--spec DIR] [--check]``; ``--check`` exits 1
when the committed files differ from what the pack generates.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from dotsd.model.yang import YangValidator  # noqa: E402

OUT_TABLE = REPO / "src" / "dotsd" / "model" / "_cbor_key_table.py"
OUT_YANG = REPO / "src" / "dotsd" / "model" / "yang_modules"

UINT_BOUNDS = {"Uint8Type": 2**8 - 1, "Uint16Type": 2**16 - 1, "Uint32Type": 2**32 - 1}
INT_BOUNDS = {"Int8Type": 2**7, "Int16Type": 2**15, "Int32Type": 2**31}
STRINGISH = {"StringType", "IdentityrefType", "InstanceIdentifierType"}


def find_spec(explicit: str | None) -> Path:
    for candidate in (explicit, os.environ.get("DOTS_SPEC_DIR"), REPO.parent / "shared" / "spec"):
        if candidate and (Path(candidate) / "cbor-keys.tsv").is_file():
            return Path(candidate)
    raise SystemExit("spec pack not found: pass --spec or set DOTS_SPEC_DIR")


# -- value types from the YANG modules ---------------------------------------------------------


@dataclass(frozen=True)
class ValueType:
    kind: str  # container | list | leaf-list | leaf
    scalar: str | None = None  # string | uint | uint64 | int | enum | decimal64 | boolean
    low: int | None = None
    high: int | None = None
    enum: tuple[tuple[str, int], ...] | None = None
    fraction_digits: int | None = None


def _int_bounds(t: Any) -> tuple[int, int]:
    cls = type(t).__name__
    if cls in UINT_BOUNDS:
        low, high = 0, UINT_BOUNDS[cls]
    else:
        low, high = -INT_BOUNDS[cls], INT_BOUNDS[cls] - 1
    if t.range is not None and t.range.intervals:
        low = min(r[0] for r in t.range.intervals)
        high = max(r[-1] for r in t.range.intervals)
    return low, high


def classify(t: Any, kind: str) -> ValueType:
    """YANG type → codec value type (RFC 9132 §6 Table 5; RFC 7951 §6 for the JSON side)."""
    cls = type(t).__name__
    if cls == "LeafrefType":
        return classify(t.ref_type, kind)
    if cls in STRINGISH:
        return ValueType(kind, "string")
    if cls == "BooleanType":
        return ValueType(kind, "boolean")
    if cls == "EnumerationType":
        return ValueType(kind, "enum", enum=tuple(sorted(t.enum.items(), key=lambda e: e[1])))
    if cls == "Decimal64Type":
        return ValueType(kind, "decimal64", fraction_digits=t.fraction_digits)
    if cls == "Uint64Type":
        return ValueType(kind, "uint64", 0, 2**64 - 1)
    if cls in UINT_BOUNDS:
        return ValueType(kind, "uint", *_int_bounds(t))
    if cls in INT_BOUNDS:
        return ValueType(kind, "int", *_int_bounds(t))
    if cls == "UnionType":
        members = [classify(m, kind) for m in t.types]
        if all(m.scalar == "string" for m in members):
            return ValueType(kind, "string")
        if all(m.scalar in ("uint", "int") for m in members):
            bounds = [_int_bounds(m) for m in t.types]
            return ValueType(kind, "int", min(b[0] for b in bounds), max(b[1] for b in bounds))
    raise SystemExit(f"unsupported YANG type {cls} in a signal channel structure")


def walk_structures(validator: YangValidator) -> dict[str, set[ValueType]]:
    """JSON member name (RFC 7951 §4: qualified where the module changes) → value types seen."""
    seen: dict[str, set[ValueType]] = {}

    def walk(node: Any, parent_ns: str) -> Iterator[tuple[str, ValueType]]:
        for child in node.children:
            cls = type(child).__name__
            if cls in ("ChoiceNode", "CaseNode", "GroupNode"):
                yield from walk(child, parent_ns)
                continue
            name = child.name if child.ns == parent_ns else f"{child.ns}:{child.name}"
            if cls == "ContainerNode":
                yield name, ValueType("container")
            elif cls == "ListNode":
                yield name, ValueType("list")
            elif cls == "LeafNode":
                yield name, classify(child.type, "leaf")
            elif cls == "LeafListNode":
                yield name, classify(child.type, "leaf-list")
            else:
                raise SystemExit(f"unexpected node {cls} {name}")
            if cls in ("ContainerNode", "ListNode"):
                yield from walk(child, child.ns)

    for root in validator.structure_roots.values():
        for name, vtype in walk(root, root.ns):
            seen.setdefault(name, set()).add(vtype)
    return seen


def merge(name: str, types: set[ValueType]) -> ValueType:
    """One value type per name (RFC 9132 §6: one key per parameter name, context-free)."""
    if len(types) == 1:
        return next(iter(types))
    kinds = {t.kind for t in types}
    scalars = {t.scalar for t in types}
    if len(kinds) == 1 and scalars == {"enum"}:
        # 'unit' is unit-class (1-3) in unit-config and unit (1-24) elsewhere (RFC 9244 §11.1):
        # compatible when every label keeps its value.
        merged: dict[str, int] = {}
        for t in types:
            for label, value in t.enum or ():
                if merged.setdefault(label, value) != value:
                    raise SystemExit(f"{name}: conflicting enum value for {label}")
        if len(set(merged.values())) != len(merged):
            raise SystemExit(f"{name}: conflicting enum labels")
        enum = tuple(sorted(merged.items(), key=lambda e: e[1]))
        return ValueType(next(iter(kinds)), "enum", enum=enum)
    raise SystemExit(f"{name}: different types in different contexts: {types}")


def from_tsv_yang_type(row: dict[str, str]) -> ValueType:
    """For the names that occur in no structure (top-level case names; cuid/cdid/sid, which
    RFC 9132 Appendix A removed from bodies): the TSV's own YANG type column."""
    yang_type = row["yang_type"]
    if yang_type == "container":
        return ValueType("container")
    if yang_type == "string":
        return ValueType("leaf", "string")
    if yang_type == "uint32":
        return ValueType("leaf", "uint", 0, 2**32 - 1)
    raise SystemExit(f"{row['parameter_name']}: no structure node and YANG type {yang_type}")


# -- cross-check with the TSV major type ---------------------------------------------------------

EXPECTED_MAJOR = {
    "container": "5 map",
    "list": "4 array",
    ("leaf", "string"): "3 text string",
    ("leaf", "uint"): "0 unsigned",
    ("leaf", "uint64"): "0 unsigned",
    ("leaf", "enum"): "0 unsigned",
    ("leaf", "int"): "0 unsigned | 1 negative",
    ("leaf", "boolean"): "7 bits 20 | 7 bits 21",
    ("leaf", "decimal64"): "6 tag 4 [-2, integer]",
    ("leaf-list", "string"): "4 array; items: 3 text string",
    ("leaf-list", "uint"): "4 array; items: 0 unsigned",
    ("leaf-list", "enum"): "4 array; items: 0 unsigned",
}


def check_major(row: dict[str, str], vt: ValueType) -> None:
    key: Any = vt.kind if vt.kind in ("container", "list") else (vt.kind, vt.scalar)
    expected = EXPECTED_MAJOR.get(key)
    if expected != row["cbor_major_type"]:
        raise SystemExit(
            f"{row['parameter_name']}: TSV major type {row['cbor_major_type']!r}"
            f" but YANG gives {vt} (expected {expected!r})"
        )
    if vt.scalar == "decimal64" and vt.fraction_digits != 2:
        raise SystemExit(f"{row['parameter_name']}: Table 5 says tag 4 [-2, ...]: 2 digits")


def rfc7951_json_type(vt: ValueType) -> str:
    """RFC 7951 §6: uint64/decimal64/enumeration are JSON strings, uint8-32 numbers."""
    if vt.kind == "container":
        return "Object"
    if vt.kind == "list":
        return "Array"
    item = {
        "string": "String",
        "uint": "Number",
        "int": "Number",
        "uint64": "String",
        "enum": "String",
        "decimal64": "String",
        "boolean": "False | True",
    }[vt.scalar or ""]
    return f"Array; items: {item}" if vt.kind == "leaf-list" else item


# -- output --------------------------------------------------------------------------------------


def _lit(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _wrap(items: list[str], opener: str, closer: str, width: int = 99) -> list[str]:
    """Pack comma-separated items into lines of at most ``width`` characters."""
    lines: list[str] = []
    current = opener
    for index, item in enumerate(items):
        piece = item + (closer if index == len(items) - 1 else ",")
        sep = "" if current.endswith("(") else " "
        if len(current) + len(sep) + len(piece) > width:
            lines.append(current)
            current = "        " + piece
        else:
            current += sep + piece
    lines.append(current)
    return lines


def render(rows: list[dict[str, str]], types: dict[str, ValueType], notes: list[str]) -> str:
    out = [
        '"""DOTS signal channel CBOR keys: GENERATED by scripts/gen_cbor_keys.py. Do not edit.',
        "",
        "Source: the spec pack's cbor-keys.tsv (RFC 9132 §6 Table 5, RFC 9066 §6.2 Table 1,",
        "RFC 9133 §3.2.1 Table 1, RFC 9244 §12 Table 3, RFC 9362 §4 Table 2), value types from the",
        "YANG modules in yang_modules/. Loaded and typed by dotsd.model.cbor_keys.",
        "",
    ]
    out += [f"Note: {n}" for n in notes]
    out += [
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        "Row = tuple[",
        "    str, int, str, str | None, int | None, int | None, int | None,",
        "    str, str, str, str, str, str, str,",
        "]",
        "",
        "# name, key, kind, scalar, low, high, fraction_digits,",
        "# comprehension, cbor_major_type, json_type (RFC 7951), table_json_type, yang_type,",
        "# source_rfc, rfc_location",
        "ROWS: Final[tuple[Row, ...]] = (",
    ]
    enums: dict[str, tuple[tuple[str, int], ...]] = {}
    for row in rows:
        name = row["parameter_name"]
        vt = types[name]
        fields: list[Any] = [
            name,
            int(row["cbor_key"]),
            vt.kind,
            vt.scalar,
            vt.low,
            vt.high,
            vt.fraction_digits,
            row["comprehension"],
            row["cbor_major_type"],
            rfc7951_json_type(vt),
            row["json_type"],
            row["yang_type"],
            row["source_rfc"],
            row["rfc_location"],
        ]
        out += _wrap([_lit(f) for f in fields], "    (", "),")
        if vt.enum:
            enums[name] = vt.enum
    out += [")", "", "# parameter name -> ((label, value), ...), from the YANG enumerations", ""]
    out.append("ENUMS: Final[dict[str, tuple[tuple[str, int], ...]]] = {")
    for name, labels in enums.items():
        out.append(f"    {_lit(name)}: (")
        out += [f"        ({_lit(label)}, {value}),"for label, value in labels]
        out.append("    ),")
    out.append("}")
    return "\n".join(out) + "\n"


def sha256sums(spec: Path) -> dict[str, str]:
    sums = {}
    for line in (spec / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        sums[rel.removeprefix("./")] = digest
    return sums


def sync_yang(spec: Path, check: bool) -> list[str]:
    problems = []
    sums = sha256sums(spec)
    wanted = sorted((spec / "yang").glob("*.yang"))
    for src in wanted:
        data = src.read_bytes()
        if hashlib.sha256(data).hexdigest() != sums.get(f"yang/{src.name}"):
            raise SystemExit(f"{src}: sha256 differs from the pack's SHA256SUMS")
        dst = OUT_YANG / src.name
        if check:
            if not dst.is_file() or dst.read_bytes() != data:
                problems.append(f"{dst} differs from {src}")
        else:
            OUT_YANG.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    extra = {p.name for p in OUT_YANG.glob("*.yang")} - {p.name for p in wanted}
    problems += [f"{OUT_YANG / n} is not in the pack" for n in sorted(extra)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="spec pack directory (with cbor-keys.tsv)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    spec = find_spec(args.spec)

    problems = sync_yang(spec, args.check)
    validator = YangValidator(spec / "yang")
    seen = walk_structures(validator)
    with (spec / "cbor-keys.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))

    names = [r["parameter_name"] for r in rows]
    keys = [r["cbor_key"] for r in rows]
    if len(set(names)) != len(names) or len(set(keys)) != len(keys):
        raise SystemExit("cbor-keys.tsv: duplicate names or keys")
    unmapped = sorted(set(seen) - set(names))
    if unmapped:
        raise SystemExit(f"structure nodes without a CBOR key: {unmapped}")

    types: dict[str, ValueType] = {}
    notes: list[str] = []
    for row in rows:
        name = row["parameter_name"]
        vt = merge(name, seen[name]) if name in seen else from_tsv_yang_type(row)
        check_major(row, vt)
        types[name] = vt
        json_type = rfc7951_json_type(vt)
        if json_type != row["json_type"] and not (
            vt.scalar == "enum" and row["json_type"].endswith("String")
        ):
            notes.append(
                f"{name}: table JSON type {row['json_type']!r}, YANG/RFC 7951 {json_type!r};"
                " the codec follows RFC 7951."
            )

    text = render(rows, types, notes)
    if args.check:
        if not OUT_TABLE.is_file() or OUT_TABLE.read_text(encoding="utf-8") != text:
            problems.append(f"{OUT_TABLE} is out of date")
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    OUT_TABLE.write_text(text, encoding="utf-8")
    print(f"wrote {OUT_TABLE.relative_to(REPO)} ({len(rows)} keys), {OUT_YANG.relative_to(REPO)}")
    for n in notes:
        print("note:", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
