#!/usr/bin/env bash
# SQL over a folder of FHIR NDJSON, in one run on the same files:
#   first     `fhirflight sql --folder`: read the NDJSON, convert it to a Parquet snapshot, query
#   repeated  the same command again: the query on the snapshot (median of REPS runs)
#   duckdb    DuckDB read_json_auto, the same aggregate (../shared/bench/b_duckdb.py --query agg)
# Every figure is a whole fresh process, fhirflight's including its start-up; DuckDB's excludes
# the Python start-up and import. Prints the seconds and the ratios duckdb/repeated (target >= 10)
# and duckdb/first.
#
# Usage: benches/catalog.sh                          (from anywhere; release build)
#        PROFILE=debug MULT=1 REPS=1 benches/catalog.sh   (a quick check)
# Env:   PROFILE (release|debug), TYPES (default Observation,Condition,Patient), REPS (default 3),
#        MULT (copies of synthea-100 via multiply.py, default 4), WORK (default /tmp/fhirflight-bench),
#        VENV (python venv with duckdb; made on first use, default ~/.cache/fhirflight/bench-venv),
#        BIN (a fhirflight binary to use instead of building one)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
TYPES=${TYPES:-Observation,Condition,Patient}
REPS=${REPS:-3}
MULT=${MULT:-4}
WORK=${WORK:-/tmp/fhirflight-bench}
VENV=${VENV:-$HOME/.cache/fhirflight/bench-venv}
BENCH=${FHIRFLIGHT_SHARED:-../shared}/bench
DATA_SRC=${FHIRFLIGHT_SHARED:-../shared}/data/synthea-100
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fhirflight-target}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import duckdb' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q duckdb
fi
PY=$VENV/bin/python
if [ -z "${BIN:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build -q --release --bin fhirflight; else cargo build -q --bin fhirflight; fi
  BIN=$CARGO_TARGET_DIR/$PROFILE/fhirflight
fi

mkdir -p "$WORK/s100"
for f in "$DATA_SRC"/*.ndjson.gz; do
  out="$WORK/s100/$(basename "$f" .gz)"
  [ -s "$out" ] || gunzip -c "$f" > "$out"
done
data=$WORK/s100
if [ "$MULT" -gt 1 ]; then
  data=$WORK/x$MULT
  [ -d "$data" ] || "$PY" "$BENCH/multiply.py" "$WORK/s100" "$data" "$MULT"
fi
# Only the benchmarked types in the folder the catalog reads (it converts what a query needs).
folder=$WORK/catalog-x$MULT
mkdir -p "$folder"
IFS=, read -ra types <<< "$TYPES"
for t in "${types[@]}"; do ln -sf "$data/$t.ndjson" "$folder/$t.ndjson"; done
echo "# data: $data $(du -smL "$folder" | cut -f1) MB ($TYPES); $(nproc) cores; $PROFILE build; $(date -u +%FT%TZ)"

# The aggregates of b_duckdb.py, over the flattened columns.
query() {
  case $1 in
    Condition) echo 'SELECT code_coding_0_code AS code, count(*) AS n FROM condition GROUP BY 1 ORDER BY n DESC' ;;
    Observation) echo 'SELECT code_coding_0_code AS code, avg("valueQuantity_value") AS avg_v, count(*) AS n FROM observation WHERE "valueQuantity_value" IS NOT NULL GROUP BY 1' ;;
    Patient) echo 'SELECT gender, count(*) AS n, min("birthDate") AS oldest FROM patient GROUP BY 1' ;;
    *) echo "no query for $1" >&2; exit 2 ;;
  esac
}
seconds() { # command... -> wall seconds
  local t0 t1
  t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf '%-12s %9s %9s %9s %14s %12s\n' type first_s repeat_s duckdb_s duckdb/repeat duckdb/first
for t in "${types[@]}"; do
  q=$(query "$t")
  cache=$(mktemp -d "$WORK/cache.XXXXXX")
  run() { FHIRFLIGHT_LOG=warn "$BIN" sql --folder "$folder" --cache-dir "$cache" --freshness never --format csv "$q"; }
  first=$(seconds run)
  repeat=$(for _ in $(seq "$REPS"); do seconds run; done | median)
  duck=$("$PY" "$BENCH/b_duckdb.py" "$data" --types "$t" --reps "$REPS" --query agg | awk -v t="$t" '$1 == "duckdb_agg" && $2 == t { print $5 }')
  rm -rf "$cache"
  awk -v t="$t" -v f="$first" -v r="$repeat" -v d="$duck" \
    'BEGIN { printf "%-12s %9.3f %9.3f %9.3f %13.1fx %11.2fx\n", t, f, r, d, d / r, d / f }'
done
