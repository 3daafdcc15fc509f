"""Starts the Flight SQL test server (examples/flight_test_server.rs) for the Python clients.

The server binary comes from FHIRFLIGHT_TEST_SERVER, or `cargo build --example
flight_test_server` in the crate (honouring CARGO_TARGET_DIR).
"""

import os
import subprocess
from pathlib import Path

import pytest

CRATE = Path(__file__).resolve().parents[2]
USER, PASSWORD = "alice", "wonderland"


def server_binary() -> str:
    if os.environ.get("FHIRFLIGHT_TEST_SERVER"):
        return os.environ["FHIRFLIGHT_TEST_SERVER"]
    subprocess.run(["cargo", "build", "--quiet", "--example", "flight_test_server"], cwd=CRATE, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", CRATE / "target"))
    return str(target / "debug" / "examples" / "flight_test_server")


@pytest.fixture(scope="session")
def server():
    """(host, port) of a running server; it stops when its stdin closes."""
    env = dict(os.environ, FHIRFLIGHT_USERS=f"{USER}:{PASSWORD}")
    proc = subprocess.Popen([server_binary()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), f"unexpected server output: {line!r}"
        host, port = line.split()[-1].rsplit(":", 1)
        yield host, int(port)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
