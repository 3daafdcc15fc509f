#!/usr/bin/env bash
# SQL over a folder of FHIR NDJSON beside DuckDB, like for like, on the same files. Per type:
#   first_s    fhirflight in-process (benches/catalog.rs): the first query, which converts
#              the NDJSON to a Parquet snapshot, then answers
#   repeat_s   the same query again in that process, on the snapshot (median of REPS)
#   plan_s     the planning part of repeat_s (snapshot lookup, table, physical plan)
#   duckdb_s   DuckDB read_json_auto, the same aggregate in-process (../shared/bench/b_duckdb.py
#              --query agg; median of REPS, Python start-up excluded)
#   cli_s      the whole `fhirflight sql --folder` process answering from the snapshot (median of
#              REPS, start-up included): what a CLI user waits
# Ratios duckdb/repeat (target >= 10) and duckdb/first. The last columns check that both engines
# agree: rows returned and the sum of the count column, fhirflight's then DuckDB's. (Observation:
# DuckDB keeps rows with a valueQuantity, fhirflight rows with valueQuantity_value; synthea's
# quantities all have a value, and the check would show a difference.)
#
# Usage: benches/catalog.sh                          (from anywhere; release build)
#        PROFILE=debug MULT=1 REPS=1 benches/catalog.sh   (a quick check)
# Env:   PROFILE (release|debug), TYPES (default Observation,Condition,Patient), REPS (default 3),
#        MULT (copies of synthea-100 via multiply.py, default 4), WORK (default /tmp/fhirflight-bench),
#        VENV (python venv with duckdb; made on first use, default ~/.cache/fhirflight/bench-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
TYPES=${TYPES:-Observation,Condition,Patient}
MULT=${MULT:-4}
source benches/common.sh
bench_python duckdb
bench_cli
EX=$(bench_exe catalog)

unzip_sample
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
echo "# data: $data $(du -smL "$folder" | cut -f1) MB ($TYPES); $(nproc) cores; $PROFILE build; REPS=$REPS; $(date -u +%FT%TZ)"

seconds() { # command... -> wall seconds
  local t0 t1
  t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
# DuckDB's result of b_duckdb.py's own query (untimed): "rows sum(n)".
duck_checksum() {
  "$PY" - "$BENCH" "$data/$1.ndjson" "$1" <<'PY'
import sys; sys.path.insert(0, sys.argv[1]); sys.argv[1:] = sys.argv[2:]
import duckdb
from b_duckdb import AGG
con = duckdb.connect()
cur = con.execute(AGG[sys.argv[2]].format(f=sys.argv[1]))
n = [d[0] for d in cur.description].index('n')
rows = cur.fetchall()
print(len(rows), sum(r[n] for r in rows))
PY
}

cache=$(mktemp -d "$WORK/cache.XXXXXX")
trap 'rm -rf "$cache"' EXIT
declare -A first repeat plan check
while read -r tool t f r p groups total; do
  [ "$tool" = fhirflight_catalog ] || continue
  first[$t]=$f; repeat[$t]=$r; plan[$t]=$p; check[$t]="$groups $total"
done < <(FHIRFLIGHT_LOG=warn "$EX" "$folder" --cache "$cache" --types "$TYPES" --reps "$REPS")

printf '%-12s %8s %9s %8s %8s %8s %14s %12s  %s\n' type first_s repeat_s plan_s duckdb_s cli_s \
  duckdb/repeat duckdb/first 'rows,sum(n): fhirflight | duckdb'
for t in "${types[@]}"; do
  q=$("$EX" --query "$t")
  # The CLI over the same cache: the snapshot made above, so this is a repeated query.
  cli() { FHIRFLIGHT_LOG=warn "$BIN" sql --folder "$folder" --cache-dir "$cache" --freshness never --format csv "$q"; }
  cli_s=$(for _ in $(seq "$REPS"); do seconds cli; done | median)
  duck=$("$PY" "$BENCH/b_duckdb.py" "$data" --types "$t" --reps "$REPS" --query agg | awk -v t="$t" '$1 == "duckdb_agg" && $2 == t { print $5 }')
  awk -v t="$t" -v f="${first[$t]}" -v r="${repeat[$t]}" -v p="${plan[$t]}" -v d="$duck" -v c="$cli_s" \
    -v ours="${check[$t]}" -v theirs="$(duck_checksum "$t")" \
    'BEGIN { printf "%-12s %8.3f %9.4f %8.4f %8.3f %8.3f %13.1fx %11.2fx  %s | %s%s\n", t, f, r, p, d, c, d / r, d / f,
             ours, theirs, (ours == theirs) ? "" : "  (DIFFER)" }'
done
