#!/usr/bin/env bash
# Wide tables: `SELECT *` on the demo generator's Provenance with WIDTHS targets per patient (a
# flattened column each; Synthea's real Provenance has 6,249 columns), beside the notebook's
# pandas (../shared/bench/b_pandas_flatten.py: json.loads, flatten_json, pandas.json_normalize)
# reading the same file. Per width (benches/wide.rs, one process):
#   plan_s     planning SELECT * (statement to physical plan; median of REPS; target < 0.3 s at 6,000)
#   explain_s  EXPLAIN SELECT * to the end (median of REPS)
#   select_s   the whole SELECT * on the snapshot (median of REPS)
#   first_s    the first SELECT *, which converts the NDJSON to a snapshot, then answers
#   df_plan_s  the same planning by DataFusion's own SQL planner (once): what the catalog avoids
#   pandas_s   the notebook pipeline on the same NDJSON (median of REPS, fresh processes)
# Ratios df_plan/plan and pandas/select, pandas/first (> 1: fhirflight faster).
#
# Usage: benches/wide.sh                               (from anywhere; release build)
#        PROFILE=debug WIDTHS=500,1000 REPS=1 benches/wide.sh   (a quick check)
# Env:   PROFILE (release|debug), WIDTHS (default 1000,2000,4000,6000), PATIENTS (rows, default 100),
#        REPS (default 3), WORK (default /tmp/fhirflight-bench), VENV (python venv with pandas and
#        flatten_json; default ~/.cache/fhirflight/bench-venv, made on first use)
set -euo pipefail
cd "$(dirname "$0")/.."
WIDTHS=${WIDTHS:-1000,2000,4000,6000}
PATIENTS=${PATIENTS:-100}
source benches/common.sh
bench_python pandas flatten_json
# Run by hand: cargo bench --bench wide -- DIR [--widths ...].
EX=$(bench_exe wide)

dir=$WORK/wide-p$PATIENTS
mkdir -p "$dir"
echo "# $PATIENTS patients (rows) a width; $(nproc) cores; $PROFILE build; REPS=$REPS; $(date -u +%FT%TZ)"
printf '%6s %8s %5s %8s %9s %8s %8s %9s %8s %13s %13s %12s\n' width columns rows plan_s explain_s \
  select_s first_s df_plan_s pandas_s df_plan/plan pandas/select pandas/first
while read -r tool width columns rows first plan explain select df_plan folder; do
  [ "$tool" = fhirflight_wide ] || continue
  pandas=$("$PY" "$BENCH/b_pandas_flatten.py" "$folder" --types Provenance --reps "$REPS" \
    | awk '$1 == "pandas_flatten" && $2 == "Provenance" { print $5 }')
  awk -v w="$width" -v c="$columns" -v r="$rows" -v p="$plan" -v e="$explain" -v s="$select" \
    -v f="$first" -v d="$df_plan" -v pd="$pandas" \
    'BEGIN { printf "%6d %8d %5d %8.4f %9.4f %8.4f %8.3f %9.3f %8.3f %12.1fx %12.2fx %11.2fx\n",
             w, c, r, p, e, s, f, d, pd, d / p, pd / s, pd / f }'
done < <(FHIRFLIGHT_LOG=warn "$EX" "$dir" --widths "$WIDTHS" --patients "$PATIENTS" --reps "$REPS")
