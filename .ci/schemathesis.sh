#!/usr/bin/env bash
# Hostile input against the live API: starts a real `cis490-reconciler serve` (temp state
# dir, a small manifest, operator and worker tokens), checks its served OpenAPI document with
# openapi-spec-validator, then runs schemathesis against it with a bounded example count:
# no 5xx and every answer conforming to the document. Installs what it needs into a venv
# under target/. Called by .ci/run after `cargo test --workspace`; runs alone too.
#
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default 50)
#   SCHEMATHESIS_SEED          the generator's seed (default 490: the same cases each run)
#   SCHEMATHESIS_CHECKS        schemathesis checks (default below)
#   CIS490_RECONCILER_BIN      the server binary (default target/debug/cis490-reconciler)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

SCHEMATHESIS_VERSION=4.32.5
SPEC_VALIDATOR_VERSION=0.9.0
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
CHECKS="${SCHEMATHESIS_CHECKS:-not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance}"
BIN="${CIS490_RECONCILER_BIN:-target/debug/cis490-reconciler}"
VENV=target/schemathesis-venv

if [ ! -x "$BIN" ]; then
  cargo build -q -p cis490-reconciler
fi

# The venv: Debian's python3 needs python3-venv for `python3 -m venv`.
wanted="schemathesis==$SCHEMATHESIS_VERSION openapi-spec-validator==$SPEC_VALIDATOR_VERSION"
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$wanted" ]; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC2086 # $wanted is two requirement specifiers
  "$VENV/bin/pip" install -q --disable-pip-version-check $wanted
  echo "$wanted" > "$VENV/.installed"
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/training_manifest.toml" <<'TOML'
version = 1

[defaults]
command = ["true"]

[[hosts]]
name = "gpu-box"
allow_jobs = ["gbt", "mlp"]

[models.gbt]
hyper = { n_estimators = "int", learning_rate = "float" }

[models.mlp]

[[jobs]]
model = "gbt"
mode = "realistic"
hyper = { n_estimators = 100, learning_rate = 0.1 }
matrix = { seed = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }

[[jobs]]
model = "mlp"
mode = "oracle"
require_cuda = true
min_vram_gib = 8
matrix = { seed = [1, 2, 3] }
TOML

OPERATOR_TOKEN="operator-$RANDOM$RANDOM"
WORKER_TOKEN="worker-$RANDOM$RANDOM"
CIS490_OPERATOR_TOKEN="$OPERATOR_TOKEN" CIS490_WORKER_TOKEN="$WORKER_TOKEN" RUST_LOG=warn \
  "$BIN" serve --manifest "$WORK/training_manifest.toml" --state-dir "$WORK/state" \
  --listen 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!

url=""
for _ in $(seq 100); do
  url="$(sed -n 's/^cis490-reconciler listening on \(http[s]*:\/\/[^ ]*\).*/\1/p' "$WORK/server.out")"
  [ -n "$url" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.err" >&2; echo "the server did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$WORK/server.err" >&2; echo "the server did not say where it listens" >&2; exit 1; }

echo "== openapi-spec-validator $url/v1/openapi.json"
"$VENV/bin/python" - "$url/v1/openapi.json" <<'PY'
import json, sys, urllib.request
from openapi_spec_validator import validate
doc = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))
validate(doc)
print(f"valid OpenAPI {doc['openapi']}: {len(doc['paths'])} paths")
PY

echo "== schemathesis $SCHEMATHESIS_VERSION, $MAX_EXAMPLES examples per operation, checks $CHECKS"
status=0
# From the temp dir, so that schemathesis's and hypothesis's caches go with it.
# One worker: with two threads, hypothesis's `ast.parse` calls run at once and CPython 3.11
# before 3.11.8 (gh-106905: the AST converter's recursion depth is global) fails a case with
# "SystemError: AST constructor recursion depth mismatch", at random. One worker is also
# what makes `--seed` repeat a run.
config="$PWD/.ci/schemathesis.toml"
(cd "$WORK" && "$ROOT/$VENV/bin/schemathesis" --config-file "$config" run "$url/v1/openapi.json" \
  --checks "$CHECKS" \
  --max-examples "$MAX_EXAMPLES" \
  --workers 1 \
  --request-timeout 10 \
  --seed "${SCHEMATHESIS_SEED:-490}" \
  --no-color \
  -H "Authorization: Bearer $WORKER_TOKEN" \
  -H "X-Operator-Token: $OPERATOR_TOKEN") \
  >"$WORK/schemathesis.log" 2>&1 || status=$?
cat "$WORK/schemathesis.log"
cases="$(grep -A1 '^Test cases:' "$WORK/schemathesis.log" | tail -1 | sed 's/^ *//')"
closing="$(grep -E '^=+ .+ in [0-9.]+s =+$' "$WORK/schemathesis.log" | tail -1 | sed 's/^=* *//; s/ *=*$//')"
echo "schemathesis summary: ${cases:-no test cases reported}; ${closing:-no closing line}"
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "the server died during the run:" >&2
  cat "$WORK/server.err" >&2
  status=1
fi
if grep -q "panicked" "$WORK/server.err"; then
  echo "the server panicked during the run:" >&2
  grep -A5 "panicked" "$WORK/server.err" >&2
  status=1
fi
exit "$status"
