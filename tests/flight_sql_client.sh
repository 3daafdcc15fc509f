#!/usr/bin/env bash
# Drives the fhirflight Flight SQL server with Apache's own `flight_sql_client` (arrow-flight's
# `cli` feature, the same arrow version as the server): handshake, catalogs, db-schemas, tables,
# a statement query and a prepared-statement query with a parameter. Exits non-zero on the first
# wrong answer.
#
# Usage: tests/flight_sql_client.sh
#   FLIGHT_SQL_CLIENT  the client binary (default: built once into ~/.cache/fhirflight-tools)
#   FHIRFLIGHT_TEST_SERVER  the server binary (default: cargo build --example flight_test_server)
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${HOME}/.cache/fhirflight-tools"
client="${FLIGHT_SQL_CLIENT:-${tools}/bin/flight_sql_client}"
if [[ ! -x "$client" ]]; then
  echo "building flight_sql_client (arrow-flight 59.3.2, once)..." >&2
  CARGO_TARGET_DIR="${tools}/target" cargo install --quiet --locked arrow-flight@59.3.2 \
    --features "cli flight-sql tls-ring" --bin flight_sql_client --root "$tools"
fi

server="${FHIRFLIGHT_TEST_SERVER:-}"
if [[ -z "$server" ]]; then
  cargo build --quiet --example flight_test_server
  server="${CARGO_TARGET_DIR:-target}/debug/examples/flight_test_server"
fi

# The server stops when its stdin closes; its first line says where it listens.
dir=$(mktemp -d)
mkfifo "$dir/in" "$dir/out"
FHIRFLIGHT_USERS=alice:wonderland "$server" <"$dir/in" >"$dir/out" &
pid=$!
exec 3>"$dir/in" 4<"$dir/out"
trap 'exec 3>&- 4<&-; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
read -r line <&4
[[ "$line" == "listening on "* ]] || { echo "unexpected server output: $line" >&2; exit 1; }
port="${line##*:}"

run() { "$client" --host 127.0.0.1 --port "$port" --username alice --password wonderland "$@"; }
expect() { # expect <what> <needle> <haystack>
  if ! grep -qF -- "$2" <<<"$3"; then echo "FAIL $1: no '$2' in:" >&2; echo "$3" >&2; exit 1; fi
  echo "ok   $1"
}

expect "catalogs" "fhir" "$(run catalogs)"
expect "db-schemas" "r4" "$(run db-schemas fhir)"
tables=$(run tables fhir --db-schema-filter r4 --table-filter 'P%')
expect "tables" "Patient" "$tables"
if grep -q Condition <<<"$tables"; then echo "FAIL tables: the filter let Condition through" >&2; exit 1; fi
expect "statement-query" "| pat-2 | Turing        |" \
  "$(run statement-query "SELECT id, name_0_family FROM Patient ORDER BY id")"
expect "prepared-statement-query" "| 2 |" \
  "$(run prepared-statement-query 'SELECT count(*) AS n FROM Condition WHERE code_coding_0_code = $1' -p '$1=44054006')"
# Wrong password: refused with a clear message.
if err=$("$client" --host 127.0.0.1 --port "$port" --username alice --password nope catalogs 2>&1); then
  echo "FAIL wrong password accepted" >&2; exit 1
fi
expect "wrong password" "invalid username or password" "$err"
echo "flight_sql_client: all checks passed"
