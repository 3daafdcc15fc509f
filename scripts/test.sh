#!/usr/bin/env bash
# Runs every test of fhirflight on a fresh machine that has only the Rust toolchain and python3:
# the Rust unit and integration tests, the real-client tests (Python ADBC, flightsql-dbapi, Apache's
# flight_sql_client), and, where ../shared is present, the checks against real Synthea data and the
# official SQL on FHIR and FHIRPath suites; before them fmt, clippy and rustdoc with warnings denied, and the
# library built with each cargo feature alone. Installs what it needs into caches under
# ~/.cache/fhirflight.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${FHIRFLIGHT_CACHE:-$HOME/.cache/fhirflight}"
# The README's `cargo run` builds into ./target: the tests share that build. CI keeps a warm
# target dir outside its clean clone.
if [ "${CI:-}" = true ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fhirflight-target}"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
fi
mkdir -p "$cache"

step() { printf '\n==> %s\n' "$*"; }

# Python venv for the reference pipeline and the Python Flight SQL clients, rebuilt when the
# requirements change.
venv="$cache/venv"
req=tests/python/requirements.txt
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  step "python venv ($venv)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
export FHIRFLIGHT_PYTHON="$venv/bin/python"

shared=../shared
if [ -d "$shared/data/synthea-100" ]; then
  export FHIRFLIGHT_SHARED="$(cd "$shared" && pwd)"
else
  echo "note: ../shared not found: the checks on Synthea data and the SQL on FHIR suite are skipped"
fi

step "MSRV: the toolchain is Cargo.toml's rust-version (rust-toolchain.toml pins it)"
msrv="$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)"
case "$(rustc --version)" in
  "rustc $msrv"[.\ ]*) rustc --version ;;
  *) echo "MSRV check: $(rustc --version) is not rust-version $msrv" >&2; exit 1 ;;
esac

step "cargo fmt --check, module layers, clippy -D warnings, doc -D warnings"
cargo fmt --check
python3 scripts/module_layers.py
cargo clippy --quiet --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --lib

step "feature checks (the library alone, then with each feature; lints denied in each)"
# Slow on a cold target dir: the sets "", flight, demo and cluster each enable fewer features of
# crates under DataFusion than the full build (libc's in each; tokio's, arrow's, uuid's in some),
# so each checks DataFusion, Delta and Parquet again (cargo's unit graph shows it); config and
# cli reuse the full build's checks. Warm, the six take seconds.
for features in "" flight demo config cluster cli; do
  echo "cargo clippy --lib --no-default-features${features:+ --features $features}"
  cargo clippy --quiet --lib --no-default-features ${features:+--features "$features"} -- -D warnings
done

step "cargo test"
cargo test

step "the README's cargo run shares this build (nothing left to compile)"
if cargo build --bin fhirflight 2>&1 | grep Compiling; then
  echo "the README's cargo run would build again what the tests built" >&2
  exit 1
fi

step "real Flight SQL clients against fhirflight serve --demo (Python ADBC + flightsql-dbapi, Apache flight_sql_client)"
export FHIRFLIGHT_BIN="$CARGO_TARGET_DIR/debug/fhirflight"
"$venv/bin/python" -m pytest -q tests/python
bash tests/flight_sql_client.sh

step "SQL on FHIR conformance"
if [ -n "${FHIRFLIGHT_SHARED:-}" ]; then
  "$CARGO_TARGET_DIR/debug/examples/sof_conformance" "$FHIRFLIGHT_SHARED/sql-on-fhir-tests" \
    --report "$CARGO_TARGET_DIR/sof-report.json"
fi

step "FHIRPath conformance (the HL7 FHIRPath R4 suite)"
if [ -n "${FHIRFLIGHT_SHARED:-}" ]; then
  "$CARGO_TARGET_DIR/debug/examples/fhirpath_conformance" "$FHIRFLIGHT_SHARED/fhirpath-tests" \
    --report "$CARGO_TARGET_DIR/fhirpath-report.json"
fi

step "done"
