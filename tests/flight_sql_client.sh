#!/usr/bin/env bash
# Drives `fhirflight serve --demo` (the real FHIR catalog over the embedded demo Bulk Data server)
# with Apache's own `flight_sql_client` (arrow-flight's `cli` feature, the same arrow version as
# the server): handshake, catalogs, db-schemas, tables, a statement query and a prepared-statement
# query with a parameter, against values computed in-process by `fhirflight sql --demo` (same
# deterministic population). A second FHIR server (`fhirflight demo-server`) is served beside it
# as catalog `second`, from the config file's `[servers.second]`. Exits non-zero on the first
# wrong answer.
#
# Usage: tests/flight_sql_client.sh
#   FLIGHT_SQL_CLIENT  the client binary (default: built once into ~/.cache/fhirflight-tools)
#   FHIRFLIGHT_BIN     the fhirflight binary (default: cargo build --bin fhirflight)
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${HOME}/.cache/fhirflight-tools"
client="${FLIGHT_SQL_CLIENT:-${tools}/bin/flight_sql_client}"
if [[ ! -x "$client" ]]; then
  echo "building flight_sql_client (arrow-flight 59.3.2, once)..." >&2
  CARGO_TARGET_DIR="${tools}/target" cargo install --quiet --locked arrow-flight@59.3.2 \
    --features "cli flight-sql tls-ring" --bin flight_sql_client --root "$tools"
fi

bin="${FHIRFLIGHT_BIN:-}"
if [[ -z "$bin" ]]; then
  cargo build --quiet --bin fhirflight
  bin="${CARGO_TARGET_DIR:-target}/debug/fhirflight"
fi
patients=20

# Each server's first line says where it listens; SIGTERM stops it.
dir=$(mktemp -d)
mkfifo "$dir/out" "$dir/second"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
"$bin" demo-server --listen 127.0.0.1:0 --patients 5 --keys-dir "$dir/keys" >"$dir/second" &
pids+=($!)
exec 5<"$dir/second"
read -r line <&5
second_url="${line##* }"
read -r line <&5
second_client="${line##* }"
cat >"$dir/config.toml" <<TOML
[servers.second]
url = "$second_url"
client_id = "$second_client"
key_file = "$dir/keys/demo-client-RS384.jwk.json"
TOML
"$bin" --config "$dir/config.toml" serve --demo --demo-patients "$patients" \
  --users alice:wonderland --listen 127.0.0.1:0 --cache-dir "$dir/serve" >"$dir/out" &
pids+=($!)
exec 4<"$dir/out"
read -r line <&4
[[ "$line" == *"listening on grpc://"* ]] || { echo "unexpected server output: $line" >&2; exit 1; }
port="${line##*:}"

run() { "$client" --host 127.0.0.1 --port "$port" --username alice --password wonderland "$@"; }
in_process() { "$bin" sql --demo --demo-patients "$patients" --cache-dir "$dir/sql" --format csv "$1" | tail -n 1; }
expect() { # expect <what> <needle> <haystack>
  if ! grep -qF -- "$2" <<<"$3"; then echo "FAIL $1: no '$2' in:" >&2; echo "$3" >&2; exit 1; fi
  echo "ok   $1"
}

catalogs=$(run catalogs)
expect "catalogs" "fhir" "$catalogs"
expect "catalogs from [servers.second]" "second" "$catalogs"
schemas=$(run db-schemas fhir)
grep -qE '^\| *fhir *\| *fhir *\|' <<<"$schemas" || { echo "FAIL db-schemas: $schemas" >&2; exit 1; }
echo "ok   db-schemas"
tables=$(run tables fhir --db-schema-filter fhir --table-filter 'Pat%')
expect "tables" "Patient" "$tables"
if grep -q Condition <<<"$tables"; then echo "FAIL tables: the filter let Condition through" >&2; exit 1; fi

patients_sql="SELECT count(*) AS n FROM patient"
n=$(in_process "$patients_sql")
[[ "$n" == "$patients" ]] || { echo "FAIL in-process count: $n" >&2; exit 1; }
expect "statement-query" "| $n |" "$(run statement-query "$patients_sql")"

female_sql="SELECT count(*) AS n FROM condition c JOIN patient p ON c.subject_reference = concat('Patient/', p.id) WHERE p.gender = \$1"
female=$(in_process "${female_sql/\$1/\'female\'}")
[[ "$female" -gt 0 ]] || { echo "FAIL in-process conditions of women: $female" >&2; exit 1; }
expect "prepared-statement-query" "| $female |" \
  "$(run prepared-statement-query "$female_sql" -p '$1=female')"

expect "statement-query on the second server" "| 5 |" \
  "$(run statement-query "SELECT count(*) AS n FROM second.fhir.patient")"

# Wrong password: refused with a clear message.
if err=$("$client" --host 127.0.0.1 --port "$port" --username alice --password nope catalogs 2>&1); then
  echo "FAIL wrong password accepted" >&2; exit 1
fi
expect "wrong password" "invalid username or password" "$err"
echo "flight_sql_client: all checks passed"
