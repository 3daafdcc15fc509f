"""Starts `fhirflight serve --demo` (the real FHIR catalog over the embedded demo Bulk Data
server) for the Python clients, and computes expected values with `fhirflight sql --demo` (the
same deterministic demo population, queried in-process without Flight).

The binary comes from FHIRFLIGHT_BIN, or `cargo build --bin fhirflight` in the crate (honouring
CARGO_TARGET_DIR).
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

CRATE = Path(__file__).resolve().parents[2]
USER, PASSWORD = "alice", "wonderland"
PATIENTS = "20"


def fhirflight() -> str:
    if os.environ.get("FHIRFLIGHT_BIN"):
        return os.environ["FHIRFLIGHT_BIN"]
    subprocess.run(["cargo", "build", "--quiet", "--bin", "fhirflight"], cwd=CRATE, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", CRATE / "target"))
    return str(target / "debug" / "fhirflight")


@pytest.fixture(scope="session")
def cache_dir():
    with tempfile.TemporaryDirectory(prefix="fhirflight-pytest-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def server(cache_dir):
    """(host, port) of `fhirflight serve --demo`; stopped with SIGTERM at the end."""
    cmd = [fhirflight(), "serve", "--demo", "--demo-patients", PATIENTS, "--users", f"{USER}:{PASSWORD}",
           "--listen", "127.0.0.1:0", "--cache-dir", str(cache_dir / "serve")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on grpc://" in line, f"unexpected server output: {line!r}"
        host, port = line.split("grpc://")[1].strip().rsplit(":", 1)
        yield host, int(port)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, "the server shuts down cleanly on SIGTERM"


@pytest.fixture(scope="session")
def expected(cache_dir):
    """Runs SQL in-process with `fhirflight sql --demo` (no Flight): a list of row dicts."""

    def run(sql: str) -> list[dict]:
        cmd = [fhirflight(), "sql", "--demo", "--demo-patients", PATIENTS, "--format", "json",
               "--cache-dir", str(cache_dir / "sql"), sql]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    return run
