#!/usr/bin/env bash
# The notebook's FHIRPath step over Patient resources: fhirflight beside fhirpathpy, same file, same run.
# Four paths per resource (identifier[0].value, gender, birthDate, maritalStatus.coding[0].code), first
# value of each, from evaluation alone to the whole path (NDJSON file -> Arrow batches through the view
# runner; the view as a catalog table). Prints res/s and the ratio to fhirpathpy for each.
# Data: the shared Synthea sample multiplied M times (default 1000 -> 100,000 Patients).
#
# usage: benches/fhirpath_patient.sh [M] [reps]
# needs: ../shared (sample data, bench scripts), python3 (a venv with fhirpathpy is made in .venv-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
m=${1:-1000}
reps=${2:-3}
shared=../shared
data=target/bench-data/patient-x$m
if [ ! -f "$data/Patient.ndjson" ]; then
    src=$(mktemp -d)
    gunzip -c "$shared/data/synthea-100/Patient.ndjson.gz" > "$src/Patient.ndjson"
    python3 "$shared/bench/multiply.py" "$src" "$data" "$m"
    rm -r "$src"
fi
if [ ! -x .venv-bench/bin/python ]; then
    python3 -m venv .venv-bench && .venv-bench/bin/pip install -q fhirpathpy
fi
source benches/common.sh
exe=$(bench_exe fhirpath_patient)
py=$(.venv-bench/bin/python "$shared/bench/b_fhirpath_patient.py" "$data" --types Patient --reps "$reps" | tee /dev/stderr | awk '$1 == "fhirpathpy_patient"')
rs=$("$exe" "$data" --reps "$reps" | tee /dev/stderr)
py_eval=$(sed -n 's/.*eval_res_per_s=\([0-9]*\).*/\1/p' <<< "$py")
py_total=$(awk '{print $7}' <<< "$py")
# fhirpathpy's end-to-end figure (file read, json.loads, four evaluations per resource) is the
# baseline of every whole-path line; its evaluation-only figure that of `eval`.
awk -v pe="$py_eval" -v pt="$py_total" '
    function line(label, rs, py) { printf "%-38s fhirflight %9.0f res/s   fhirpathpy %7.0f res/s   %6.1fx\n", label, rs, py, rs / py }
    $1 == "fhirflight_eval"                         { line("eval only (parsed resources):", $5, pe) }
    $1 == "fhirflight_parse+eval"                   { line("parse+eval:", $5, pt) }
    $1 == "fhirflight_ndjson->arrow"                { line("NDJSON -> Arrow via view, 1 core:", $5, pt) }
    $1 == "fhirflight_ndjson->arrow_all_cores"      { line("NDJSON -> Arrow via view, all cores:", $5, pt) }
    $1 == "fhirflight_catalog_first_scan"           { line("view table, first scan:", $5, pt) }
    $1 == "fhirflight_catalog_cached_scan"          { line("view table, cached scan:", $5, pt) }
' <<< "$rs"
