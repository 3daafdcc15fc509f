#!/usr/bin/env bash
# NDJSON -> Arrow conversion beside the baselines, in one run on the same files:
# the notebook pipeline (pandas + flatten_json), DuckDB read_json_auto count(*), and fhirflight's
# flattened mode (benches/ndjson.rs, release build) beside the JSON-parsing floor (serde_json
# into IgnoredAny, same bytes, all cores). Prints each tool's harness lines, then per type
# fhirflight's MB/s ratio to each baseline and to the floor, and its peak RSS ratio to DuckDB's.
# The machine's load is printed with each run: the ratios hold only between runs of one script.
#
# The tools take turns, one run each per repetition, and the figures are medians over the
# repetitions.
#
# Usage: benches/ndjson.sh            (from the repository root)
# Env:   VENV (python venv with pandas, flatten_json and duckdb; default
#        ~/.cache/fhirflight/bench-venv, made on first use), PROFILE (release|debug),
#        TYPES (default ExplanationOfBenefit,Observation,Claim,Encounter), REPS (default 3),
#        MULT (copies for the scale run, default 11: about 540 MB in all), WORK (default /tmp/fhirflight-bench)
#        BIN (a binary of benches/ndjson.rs to use instead of building it)
set -euo pipefail
cd "$(dirname "$0")/.."
TYPES=${TYPES:-ExplanationOfBenefit,Observation,Claim,Encounter}
MULT=${MULT:-11}
source benches/common.sh
bench_python duckdb pandas flatten_json
BIN=${BIN:-$(bench_exe ndjson)}

unzip_sample
[ -d "$WORK/x$MULT" ] || "$PY" "$BENCH/multiply.py" "$WORK/s100" "$WORK/x$MULT" "$MULT"
echo "# data: $WORK/s100 $(du -sm "$WORK/s100" | cut -f1) MB, $WORK/x$MULT $(du -sm "$WORK/x$MULT" | cut -f1) MB; $(nproc) cores; $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"

for data in "$WORK/s100" "$WORK/x$MULT"; do
  log="$WORK/$(basename "$data").log"
  # One run of each tool per repetition, in turn: a slow spell of the shared machine slows them
  # alike instead of whichever tool it falls on.
  {
    for rep in $(seq "$REPS"); do
      echo "# repetition $rep: load $(cut -d' ' -f1-3 /proc/loadavg)"
      "$PY" "$BENCH/b_pandas_flatten.py" "$data" --types "$TYPES" --reps 1
      "$PY" "$BENCH/b_duckdb.py" "$data" --types "$TYPES" --reps 1 --query count
      "$BIN" "$data" --types "$TYPES" --reps 1
    done
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  } | tee "$log"
  echo "# medians over $REPS repetitions on $data: tool type seconds MB/s peak_RSS_MB"
  echo "# ratios: fhirflight_flat MB/s / baseline MB/s; peak RSS / DuckDB's"
  awk 'function median(list,   v, n, i, j, x) {
         n = split(list, v, " ")
         for (i = 2; i <= n; i++) { x = v[i] + 0; for (j = i - 1; j > 0 && v[j] + 0 > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
         return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
       !/^#/ && NF >= 9 && $4 != "-" { k = $1" "$2; s[k] = s[k]" "$5; r[k] = r[k]" "$9; bytes[k] = $3; types[$2] = 1 }
       END { for (k in s) { sec[k] = median(s[k]); mbs[k] = bytes[k] / 1e6 / sec[k]; rss[k] = median(r[k])
                            printf "%-38s %8.3f s %8.2f MB/s %7.0f MB\n", k, sec[k], mbs[k], rss[k] }
             for (t in types) if (("fhirflight_flat " t) in mbs)
               printf "%-22s vs notebook %6.1fx   vs duckdb count(*) %5.2fx   vs parse floor %5.2fx   rss/duckdb %5.2f\n", t,
                 mbs["fhirflight_flat " t] / mbs["pandas_flatten " t], mbs["fhirflight_flat " t] / mbs["duckdb_count " t],
                 mbs["fhirflight_flat " t] / mbs["serde_floor " t], rss["fhirflight_flat " t] / rss["duckdb_count " t] }' "$log"
done
