"""Per-call cost of DTLS record protection: the compiled module against the Python class.

    python -m bench.records [N]

N ``seal`` calls and N ``open_lone`` calls (a 40-byte, CoAP-sized plaintext) for AES-128-GCM
and ChaCha20-Poly1305, each implementation on its own records; µs per call.
"""

from __future__ import annotations

import sys
import time

from dotsd._speedups import load
from dotsd.dtls.records import AEAD_SUITES, CT_APPLICATION_DATA, AeadProtection, RecordProtection

_PLAIN = bytes(40)


def _pair(suite_name: str, compiled: bool) -> tuple[AeadProtection, AeadProtection]:
    """A sender and a receiver (same keys both ways, which is enough here)."""
    suite = AEAD_SUITES[suite_name]
    key, iv = bytes(range(suite.key_len)), bytes(suite.fixed_iv_len)
    record = load("_record")
    if compiled:
        assert record is not None
        return (record.Protection(suite.algorithm, key, iv, key, iv),
                record.Protection(suite.algorithm, key, iv, key, iv))
    return (RecordProtection(suite, key, iv, key, iv),
            RecordProtection(suite, key, iv, key, iv))


def measure(suite_name: str, compiled: bool, n: int) -> tuple[float, float]:
    """(µs per seal, µs per open_lone)."""
    sender, receiver = _pair(suite_name, compiled)
    seal, plain, ct = sender.seal, _PLAIN, CT_APPLICATION_DATA
    start = time.perf_counter()
    wires = [seal(ct, plain) for _ in range(n)]
    seal_us = 1e6 * (time.perf_counter() - start) / n
    open_lone = receiver.open_lone
    start = time.perf_counter()
    for wire in wires:
        open_lone(wire)
    open_us = 1e6 * (time.perf_counter() - start) / n
    if receiver.open_lone(wires[-1]) is not None or not receiver.window.seen(n - 1):
        raise RuntimeError("the records were not all opened")
    return seal_us, open_us


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    impls = [False] + ([True] if load("_record") is not None else [])
    for name in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        for compiled in impls:
            seal_us, open_us = measure(name, compiled, n)
            label = "C" if compiled else "python"
            print(f"{name:31} {label:6}  seal {seal_us:5.2f} µs  open_lone {open_us:5.2f} µs")


if __name__ == "__main__":
    main()
