"""Uri-Path / Uri-Query of the mitigation resource (RFC 9132 §4.2, §4.4.1.1, §4.4.2, §4.4.4)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dotsd.coap.numbers import Code
from dotsd.signal.errors import BadRequest, NotFound, SignalError
from dotsd.signal.uri import (
    MAX_MID,
    MITIGATE_PATH,
    Content,
    MitigateUri,
    mitigate_path,
    parse_mitigate_uri,
)

REPO = Path(__file__).resolve().parent.parent
# The RFC figures are vendored under tests/spec (DOTS_EXAMPLES_DIR overrides).
EXAMPLES = Path(os.environ.get("DOTS_EXAMPLES_DIR", Path(__file__).parent / "spec" / "examples"))
CUID = "dz6pHjaADkaFTbjr0JGBpw"


def figure_path(name: str) -> list[str]:
    text = (EXAMPLES / name).read_text()
    first = text.split("(2)")[0]  # Figure 11: only request (1)
    return re.findall(r'Uri-Path: "([^"]*)"', first)


needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="spec pack not present")


@needs_examples
def test_fig7_put_with_cdid() -> None:
    uri = parse_mitigate_uri(figure_path("rfc9132-fig7.txt"), method=Code.PUT)
    assert uri == MitigateUri(cuid=CUID, mid=123, cdid="7eeaf349529eb55ed50113")


@needs_examples
@pytest.mark.parametrize(
    ("fig", "method", "mid"),
    [
        ("rfc9132-fig11.txt", Code.PUT, 12),
        ("rfc9132-fig12.txt", Code.GET, None),
        ("rfc9132-fig13.txt", Code.GET, 12332),
        ("rfc9132-fig16.txt", Code.PUT, 123),
        ("rfc9132-fig17.txt", Code.DELETE, 123),
    ],
)
def test_rfc_figures(fig: str, method: Code, mid: int | None) -> None:
    uri = parse_mitigate_uri(figure_path(fig), method=method)
    assert uri.cuid == CUID
    assert uri.mid == mid
    assert uri.cdid is None
    assert uri.content is Content.ALL


def test_get_without_mid_is_all_mitigations() -> None:
    assert parse_mitigate_uri(mitigate_path(CUID)).mid is None


@pytest.mark.parametrize("method", [Code.PUT, Code.DELETE])
def test_put_delete_need_mid(method: Code) -> None:
    # RFC 9132 §4.4.1.3 / §4.4.4: missing 'cuid' or 'mid' → 4.00.
    with pytest.raises(BadRequest) as info:
        parse_mitigate_uri(mitigate_path(CUID), method=method)
    assert info.value.code == Code.BAD_REQUEST


@pytest.mark.parametrize("method", [Code.GET, Code.PUT, Code.DELETE])
def test_cuid_mandatory(method: Code) -> None:
    with pytest.raises(BadRequest):
        parse_mitigate_uri([*MITIGATE_PATH, "mid=1"], method=method)
    with pytest.raises(BadRequest):
        parse_mitigate_uri(list(MITIGATE_PATH), method=method)


@pytest.mark.parametrize(
    "params",
    [
        ["mid=1", f"cuid={CUID}"],  # 'mid' MUST follow 'cuid' (§4.4.1.1)
        [f"cuid={CUID}", "cdid=abc", "mid=1"],  # 'cdid' MUST be before 'cuid' (§4.4.1.2)
        [f"cuid={CUID}", "mid=1", "cdid=abc"],
        [f"cuid={CUID}", f"cuid={CUID}", "mid=1"],  # repeated
        [f"cuid={CUID}", "mid=1", "mid=2"],
        ["cuid=", "mid=1"],  # empty values MUST NOT be present (§4.4.1.1, §4.4.2)
        [f"cuid={CUID}", "mid="],
        ["cdid=", f"cuid={CUID}", "mid=1"],
        [f"cuid={CUID}", "sid=1"],  # not a mitigation parameter
        [f"cuid={CUID}", "mid"],  # no '='
        [f"cuid={CUID}", "mid=-1"],
        [f"cuid={CUID}", "mid=+1"],
        [f"cuid={CUID}", "mid=0x10"],
        [f"cuid={CUID}", f"mid={MAX_MID + 1}"],
        [f"cuid={CUID}", "mid=99999999999"],
        ["cuid=a b", "mid=1"],  # cuid sanity
        ["cuid=a/b", "mid=1"],
        ["cuid=" + "a" * 129, "mid=1"],
    ],
)
def test_bad_paths(params: list[str]) -> None:
    with pytest.raises(BadRequest) as info:
        parse_mitigate_uri([*MITIGATE_PATH, *params], method=Code.PUT)
    assert info.value.code == Code.BAD_REQUEST
    assert info.value.rule is not None


def test_mid_bounds() -> None:
    assert parse_mitigate_uri(mitigate_path(CUID, MAX_MID), method=Code.PUT).mid == MAX_MID
    assert parse_mitigate_uri(mitigate_path(CUID, 0), method=Code.PUT).mid == 0


def test_uuid_cuid_accepted() -> None:
    # RFC 9132 §4.4.1.1: a new 'cuid' may be generated e.g. with RFC 4122 (Figure 11 (3)).
    for cuid in ("f30d281ce6b64fc5a0b91e", "123e4567-e89b-12d3-a456-426614174000"):
        assert parse_mitigate_uri(mitigate_path(cuid, 1), method=Code.PUT).cuid == cuid


def test_not_the_mitigation_resource() -> None:
    with pytest.raises(NotFound):
        parse_mitigate_uri([".well-known", "dots", "config", "sid=1"])
    with pytest.raises(NotFound):
        parse_mitigate_uri(["dots", "mitigate", f"cuid={CUID}"])


@pytest.mark.parametrize(
    ("value", "content"), [("c", Content.CONFIG), ("n", Content.NON_CONFIG), ("a", Content.ALL)]
)
def test_content_query(value: str, content: Content) -> None:
    # RFC 9132 §4.4.2 Table 2.
    uri = parse_mitigate_uri(mitigate_path(CUID), [f"c={value}"], method=Code.GET)
    assert uri.content is content


@pytest.mark.parametrize("query", [["c=x"], ["c=n", "c=a"], ["c"], ["target-prefix=1"]])
def test_bad_query(query: list[str]) -> None:
    with pytest.raises(BadRequest):
        parse_mitigate_uri(mitigate_path(CUID), query, method=Code.GET)


def test_query_ignored_outside_get() -> None:
    uri = parse_mitigate_uri(mitigate_path(CUID, 5), ["c=n"], method=Code.DELETE)
    assert uri.content is Content.ALL


ID = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~",
    min_size=1,
    max_size=128,
)


@given(cuid=ID, mid=st.integers(0, MAX_MID), cdid=st.none() | ID)
def test_roundtrip(cuid: str, mid: int, cdid: str | None) -> None:
    uri = parse_mitigate_uri(mitigate_path(cuid, mid, cdid), method=Code.PUT)
    assert uri == MitigateUri(cuid=cuid, mid=mid, cdid=cdid)


@given(
    st.lists(st.text(max_size=30), max_size=6),
    st.lists(st.text(max_size=10), max_size=3),
    st.sampled_from([Code.GET, Code.PUT, Code.DELETE]),
)
def test_never_crashes(segments: list[str], query: list[str], method: Code) -> None:
    try:
        uri = parse_mitigate_uri([*MITIGATE_PATH, *segments], query, method=method)
    except SignalError as exc:
        assert exc.code in (Code.BAD_REQUEST, Code.NOT_FOUND)
    else:
        assert uri.cuid
        assert all(s.partition("=")[2] for s in segments)  # no empty values got through


@given(st.permutations(["cdid=abc", f"cuid={CUID}", "mid=7"]))
def test_only_one_order(order: list[str]) -> None:
    path = [*MITIGATE_PATH, *order]
    if order == ["cdid=abc", f"cuid={CUID}", "mid=7"]:
        assert parse_mitigate_uri(path, method=Code.PUT).mid == 7
    else:
        with pytest.raises(BadRequest):
            parse_mitigate_uri(path, method=Code.PUT)
