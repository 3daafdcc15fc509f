# Sourced by the benchmark scripts, from the repository's root: the settings they share, the
# Python of their baselines, and the executables of bench targets.
PROFILE=${PROFILE:-release}
REPS=${REPS:-3}
WORK=${WORK:-/tmp/fhirflight-bench}
BENCH=$(realpath "${FHIRFLIGHT_SHARED:-../shared}/bench")
DATA_SRC=${FHIRFLIGHT_SHARED:-../shared}/data/synthea-100
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fhirflight-target}
flag=(); [ "$PROFILE" = release ] && flag=(--release)

# Sets PY to the python of VENV (default ~/.cache/fhirflight/bench-venv, made on first use) once
# it imports each of the given modules, installing the missing ones (pip packages of that name).
bench_python() {
  VENV=${VENV:-$HOME/.cache/fhirflight/bench-venv}
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local module
  for module in "$@"; do
    "$VENV/bin/python" -c "import $module" 2>/dev/null || "$VENV/bin/pip" install -q "$module"
  done
  PY=$VENV/bin/python
}

# The executable of the bench target NAME in PROFILE (cargo names bench binaries with a hash, so
# it is read from cargo's messages). Run by hand: cargo bench --bench NAME -- ARGS.
bench_exe() {
  local exe
  exe=$(cargo build -q "${flag[@]}" --bench "$1" --message-format=json-render-diagnostics \
    | grep '"kind":\["bench"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
  [ -x "$exe" ] || { echo "no bench binary for benches/$1.rs" >&2; return 1; }
  echo "$exe"
}

# Builds the fhirflight CLI in PROFILE and sets BIN to it.
bench_cli() {
  cargo build -q "${flag[@]}" --bin fhirflight
  BIN=$CARGO_TARGET_DIR/$PROFILE/fhirflight
}

# The median of the numbers on standard input, one a line.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Unzips the shared Synthea sample into $WORK/s100, once.
unzip_sample() {
  mkdir -p "$WORK/s100"
  local file out
  for file in "$DATA_SRC"/*.ndjson.gz; do
    out="$WORK/s100/$(basename "$file" .gz)"
    [ -s "$out" ] || gunzip -c "$file" > "$out"
  done
}
