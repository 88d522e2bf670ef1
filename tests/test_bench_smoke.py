"""The benchmark's load generator builds and counts responses from libcoap's plain server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench.build import BuildError, build_loadgen, find_compiler  # noqa: E402
from bench.servers import LIBCOAP_SERVER, PATH, start_libcoap  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.network, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def loadgen() -> Path:
    if find_compiler() is None:
        pytest.skip("no C compiler (cc/gcc) to build bench/loadgen.c")
    try:
        return build_loadgen()
    except BuildError as exc:
        pytest.skip(f"bench/loadgen.c does not build here: {exc}")


def test_rps_against_libcoap_plain(loadgen: Path, tmp_path: Path) -> None:
    if shutil.which(LIBCOAP_SERVER) is None:
        pytest.skip(f"{LIBCOAP_SERVER} not installed (apt-get install libcoap3-bin)")
    with start_libcoap(None, tmp_path, cpu=None) as server:
        done = subprocess.run(
            [str(loadgen), "rps", "--host", "127.0.0.1", "--port", str(server.udp_port),
             "--path", PATH, "--sessions", "2", "--window", "4", "--warmup", "0.2",
             "--duration", "1", "--timeout", "1"],
            capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mode"] == "rps" and result["transport"] == "udp"
    assert result["ok"] > 0
    assert result["errors"] == 0, result
    assert result["p50_us"] > 0


async def test_dtls_path_harness_measures_real_responses() -> None:
    """bench.dtls_path drives a real DtlsServer; it fails if any request goes unanswered."""
    from bench.dtls_path import measure

    cost = await measure(200)
    assert 0 < cost < 10_000
