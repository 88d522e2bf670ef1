"""DTLS record framing, replay window, PRF and AEAD record protection (dotsd.dtls.records)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotsd.dtls.records import (
    AEAD_SUITES,
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    HEADER_LEN,
    RecordProtection,
    ReplayWindow,
    pack_datagrams,
    prf_sha256,
    split_records,
)


def record(ctype: int, epoch: int, seq: int, body: bytes) -> bytes:
    return (bytes((ctype,)) + b"\xfe\xfd" + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
            + len(body).to_bytes(2, "big") + body)


def test_split_records_reads_every_header() -> None:
    data = record(CT_HANDSHAKE, 0, 7, b"a" * 20) + record(CT_CHANGE_CIPHER_SPEC, 0, 8, b"\x01") \
        + record(CT_HANDSHAKE, 1, 0, b"f" * 40)
    recs = split_records(data)
    assert [(r.content_type, r.epoch, r.seq) for r in recs] == [
        (CT_HANDSHAKE, 0, 7), (CT_CHANGE_CIPHER_SPEC, 0, 8), (CT_HANDSHAKE, 1, 0)]
    assert recs[0].start == 0 and recs[-1].end == len(data)
    assert data[recs[1].body_start:recs[1].end] == b"\x01"


@pytest.mark.parametrize("junk", [
    b"", b"\x17\xfe\xfd", b"\x17\xfe\xfd" + bytes(8) + b"\x00\x10abc",  # truncated
    b"\x05\xfe\xfd" + bytes(8) + b"\x00\x00",  # unknown content type
    b"\x17\x03\x03" + bytes(8) + b"\x00\x00",  # TLS, not DTLS
])
def test_split_records_stops_at_the_first_bad_header(junk: bytes) -> None:
    good = record(CT_APPLICATION_DATA, 1, 1, b"xyz")
    assert split_records(junk) == []
    assert len(split_records(good + junk)) == 1  # RFC 6347 §4.1.2.7: rest dropped


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_split_records_never_raises(data: bytes) -> None:
    for r in split_records(data):
        assert 0 <= r.start < r.end <= len(data)


def test_pack_datagrams_fills_up_to_mtu_and_isolates_application_data() -> None:
    parts = [record(CT_HANDSHAKE, 0, i, b"h" * 300) for i in range(5)]
    parts.append(record(CT_APPLICATION_DATA, 1, 1, b"a" * 10))
    parts.append(record(CT_ALERT, 1, 2, b"zz"))
    raw = b"".join(parts)
    out = pack_datagrams(raw, split_records(raw), 1000)
    assert [len(d) for d in out] == [3 * 313, 2 * 313, 23, 15]
    assert b"".join(out) == raw
    assert all(len(d) <= 1000 for d in out)


def test_replay_window() -> None:
    w = ReplayWindow()
    assert not w.seen(0)
    w.mark(0)
    assert w.seen(0) and not w.seen(1)
    w.mark(5)
    assert w.seen(5) and not w.seen(3) and w.seen(0)
    w.mark(3)
    assert w.seen(3)
    w.mark(100)
    assert w.seen(36) and not w.seen(37) and not w.seen(99) and w.seen(100)
    w.mark(37)
    assert w.seen(37) and not w.seen(101)
    w.mark(100 + 64)
    assert w.seen(100) and not w.seen(101)  # 100 slid out of the window: too old
    assert not w.seen(150)


def test_prf_sha256_known_answer() -> None:
    # The widely used TLS 1.2 PRF (SHA-256) test vector (IETF TLS WG, 2009).
    secret = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
    seed = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
    out = prf_sha256(secret, b"test label", seed, 100)
    assert out.hex() == (
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9"
        "a46b4e14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa480"
        "82d122ee42c5a72e5a5110fff70187347b66")


@pytest.mark.parametrize("name", sorted(AEAD_SUITES))
def test_protection_round_trip_and_tamper(name: str) -> None:
    suite = AEAD_SUITES[name]
    master, cr, sr = bytes(range(48)), b"c" * 32, b"s" * 32
    client = RecordProtection.from_master_secret(suite, master, cr, sr, is_client=True,
                                                 next_write_seq=1)
    server = RecordProtection.from_master_secret(suite, master, cr, sr, is_client=False)
    wire = client.seal(CT_APPLICATION_DATA, b"hello")
    assert len(wire) == 5 + client.overhead()
    (rec,) = split_records(wire)
    assert (rec.epoch, rec.seq) == (1, 1)
    assert server.open(wire, rec) == b"hello"
    tampered = bytearray(wire)
    tampered[-1] ^= 1
    assert server.open(bytes(tampered), rec) is None
    header_changed = bytearray(wire)
    header_changed[10] ^= 1  # another sequence number: the AAD no longer matches
    assert server.open(bytes(header_changed), split_records(bytes(header_changed))[0]) is None
    back = server.seal(CT_APPLICATION_DATA, b"")
    assert client.open(back, split_records(back)[0]) == b""
    assert len(back) == HEADER_LEN + suite.explicit_nonce_len + suite.tag_len


@pytest.mark.parametrize("name", sorted(AEAD_SUITES))
def test_lone_application_data_is_opened_once(name: str) -> None:
    suite = AEAD_SUITES[name]
    master, cr, sr = bytes(range(48)), b"c" * 32, b"s" * 32
    client = RecordProtection.from_master_secret(suite, master, cr, sr, is_client=True)
    server = RecordProtection.from_master_secret(suite, master, cr, sr, is_client=False)
    first, second = (client.seal(CT_APPLICATION_DATA, b"one"),
                     client.seal(CT_APPLICATION_DATA, b"two"))
    # Not one application-data record of this epoch: False, for the general path.
    assert server.open_lone(first + second) is False  # two records
    assert server.open_lone(first[:-1]) is False  # truncated
    for cut in range(HEADER_LEN + 1):
        assert server.open_lone(first[:cut]) is False  # not even a header
    assert server.open_lone(first + b"\x00") is False  # trailing byte
    assert server.open_lone(client.seal(CT_ALERT, b"\x01\x00")) is False
    other_epoch = RecordProtection.from_master_secret(suite, master, cr, sr, is_client=True,
                                                      epoch=2)
    assert server.open_lone(other_epoch.seal(CT_APPLICATION_DATA, b"x")) is False
    assert server.open_lone(second) == b"two"
    assert server.open_lone(second) is None  # RFC 6347 §4.1.2.6: a replay
    tampered = bytearray(first)
    tampered[-1] ^= 1
    assert server.open_lone(bytes(tampered)) is None
    assert server.open_lone(first) == b"one"  # the forgery did not enter the window
    assert server.open_lone(first) is None
