#!/usr/bin/env bash
# The first query over fresh NDJSON, each tool as a whole process, what a user waits for after
# an export: `fhirflight sql --folder` on an empty cache (reading the folder, converting the type
# to a snapshot, answering) beside a Python process running DuckDB's read_json_auto on the same
# file (the aggregate of ../shared/bench/b_duckdb.py --query agg). Per data size and type: the
# medians of REPS runs, the tools taking turns (one untimed run of each first, to warm the page
# cache alike), wall seconds and peak RSS (from /usr/bin/time), and the ratios fhirflight/DuckDB
# (target: time <= 0.67, RSS <= 0.5). The last columns check that both give the same answer
# (rows returned and the sum of the count column).
#
# Usage: benches/first_query.sh                  (from anywhere; release build)
# Env:   TYPES (default ExplanationOfBenefit,Observation), MULTS (copies of synthea-100 via
#        multiply.py, default "8 11"), REPS (default 3), WORK (default /tmp/fhirflight-bench),
#        VENV (python venv with duckdb; made on first use, default ~/.cache/fhirflight/bench-venv),
#        PROFILE (release|debug), BEFORE (a fhirflight binary of an earlier commit: it takes
#        turns too, and `ff/before` compares this build with it), TABLE_LOCATION (fhirflight's
#        --table-location, e.g. s3://bucket/prefix with the AWS_* settings of the endpoint in
#        the environment: the Delta tables uploaded there as part of the first query)
set -euo pipefail
cd "$(dirname "$0")/.."
TYPES=${TYPES:-ExplanationOfBenefit,Observation}
MULTS=${MULTS:-8 11}
source benches/common.sh
bench_python duckdb
bench_cli
# The bench binary only prints each type's SQL (the flattened twin of DuckDB's aggregate).
EX=$(bench_exe catalog)

unzip_sample
IFS=, read -ra types <<< "$TYPES"
echo "# $(nproc) cores; $PROFILE build; REPS=$REPS; $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"

# command... -> "wall_seconds peak_rss_kb"; the command's output goes to $WORK/out.
measure() {
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" > "$WORK/out"
  cat "$WORK/time"
}
# DuckDB's aggregate of a type over a file, one Python process; prints "rows sum(n)".
DUCK='import sys; sys.path.insert(0, sys.argv[1])
import duckdb
from b_duckdb import AGG
cur = duckdb.connect().execute(AGG[sys.argv[3]].format(f=sys.argv[2]))
n = [d[0] for d in cur.description].index("n")
rows = cur.fetchall()
print(len(rows), sum(r[n] for r in rows))'
# "rows sum(n)" of fhirflight's CSV answer in $WORK/out.
csv_check() {
  awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "n") c = i; next } { rows++; s += $c } END { print rows, s }' "$WORK/out"
}

printf '%-4s %-22s %6s %7s %7s %7s %8s %8s %8s %9s  %s\n' data type MB ff_s duck_s ff/duck ff_MB duck_MB rss/duck \
  ff/before 'rows,sum(n): fhirflight | duckdb'
for mult in $MULTS; do
  data=$WORK/x$mult
  [ -d "$data" ] || "$PY" "$BENCH/multiply.py" "$WORK/s100" "$data" "$mult"
  for t in "${types[@]}"; do
    # A folder holding only this type's file: the catalog lists what it reads.
    folder=$WORK/first-x$mult-$t
    mkdir -p "$folder"
    ln -sf "$data/$t.ndjson" "$folder/$t.ndjson"
    q=$("$EX" --query "$t")
    ours() { # the first query on an empty cache, by the binary $1 (default this build's)
      local cache; cache=$(mktemp -d "$WORK/fq-cache.XXXXXX")
      local tables=() # this build's tables where TABLE_LOCATION says (a new prefix each run)
      [ -n "${1:-}" ] || [ -z "${TABLE_LOCATION:-}" ] ||
        tables=(--table-location "$TABLE_LOCATION/$(basename "$cache")")
      FHIRFLIGHT_LOG=warn /usr/bin/time -f '%e %M' -o "$WORK/time" \
        "${1:-$BIN}" sql --folder "$folder" --cache-dir "$cache" --format csv "${tables[@]}" "$q" > "$WORK/out"
      rm -rf "$cache"
      cat "$WORK/time"
    }
    theirs() { measure "$PY" -c "$DUCK" "$BENCH" "$data/$t.ndjson" "$t"; }
    ours > /dev/null; theirs > /dev/null; [ -z "${BEFORE:-}" ] || ours "$BEFORE" > /dev/null
    ff_t=(); ff_m=(); dk_t=(); dk_m=(); bf_t=(0)
    [ -z "${BEFORE:-}" ] || bf_t=()
    for _ in $(seq "$REPS"); do
      read -r s m < <(ours); ff_t+=("$s"); ff_m+=("$m"); ff_check=$(csv_check)
      read -r s m < <(theirs); dk_t+=("$s"); dk_m+=("$m"); dk_check=$(cat "$WORK/out")
      [ -z "${BEFORE:-}" ] || { read -r s m < <(ours "$BEFORE"); bf_t+=("$s"); }
    done
    awk -v d="x$mult" -v mb="$(du -mL "$data/$t.ndjson" | cut -f1)" -v t="$t" \
      -v ft="$(printf '%s\n' "${ff_t[@]}" | median)" -v dt="$(printf '%s\n' "${dk_t[@]}" | median)" \
      -v fm="$(printf '%s\n' "${ff_m[@]}" | median)" -v dm="$(printf '%s\n' "${dk_m[@]}" | median)" \
      -v bt="$(printf '%s\n' "${bf_t[@]}" | median)" \
      -v ours="$ff_check" -v theirs="$dk_check" \
      'BEGIN { before = (bt > 0) ? sprintf("%8.2fx", ft / bt) : "        -"
               printf "%-4s %-22s %6d %7.2f %7.2f %6.2fx %8.0f %8.0f %7.2fx %s  %s | %s%s\n", d, t, mb, ft, dt, ft / dt,
               fm / 1024, dm / 1024, fm / dm, before, ours, theirs, (ours == theirs) ? "" : "  (DIFFER)" }'
  done
done
