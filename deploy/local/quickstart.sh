#!/usr/bin/env bash
# The local quick start: no AWS account needed.
#
# Installs a local S3 endpoint (moto, in .venv), builds and starts
# expresscache-server against it, seeds a source bucket and a directory
# bucket, then warms a prefix twice: the first run copies everything, the
# second is all hits. Everything runs on 127.0.0.1 and is stopped at the end
# (pass --keep to leave the servers running for your own experiments;
# set EXPRESSCACHE_BIN_DIR to use binaries built already instead of building).
#
# With --replicas N (N > 1) it starts a fleet instead: N replicas sharing one
# DynamoDB index on the same local endpoint (moto serves DynamoDB too), the
# CLI given every replica's endpoint.
#
#   deploy/local/quickstart.sh [--keep] [--objects N] [--replicas N]
set -euo pipefail
# shellcheck source=../../scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"
cd "$REPO_ROOT"

KEEP=0
OBJECTS=2000
REPLICAS=1
while [ $# -gt 0 ]; do
  case $1 in
    --keep) KEEP=1 ;;
    --objects) OBJECTS=$2; shift ;;
    --replicas) REPLICAS=$2; shift ;;
    *) echo "usage: $0 [--keep] [--objects N] [--replicas N]" >&2; exit 2 ;;
  esac
  shift
done
case $REPLICAS in
  ''|*[!0-9]*|0) echo "--replicas takes a number from 1" >&2; exit 2 ;;
esac

ensure_rust
ensure_venv
if [ -n "${EXPRESSCACHE_BIN_DIR:-}" ]; then
  # Binaries built already (scripts/test runs the quick start against the
  # ones its tests used).
  BIN=$EXPRESSCACHE_BIN_DIR
else
  log "building expresscache-server and expresscache"
  cargo build --locked -p expresscache-server -p expresscache-client --features expresscache-client/cli --bins
  BIN="$REPO_ROOT/target/debug"
fi

STATE="$REPO_ROOT/.local/quickstart"
rm -rf "$STATE" && mkdir -p "$STATE"
S3_PORT=$(free_port)

PIDS=()
cleanup() {
  if [ "$KEEP" = 0 ]; then
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  fi
}
trap cleanup EXIT

log "starting moto (local S3) on 127.0.0.1:$S3_PORT"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE/moto.log" 2>&1 &
PIDS+=($!)
wait_port "$S3_PORT"

# The standard AWS configuration chain: the server needs nothing else.
# (Use 127.0.0.1, not localhost: the SDK uses path-style addressing for IPs.)
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test

SRC=expresscache-demo-source
DIR=expresscache-demo--use1-az4--x-s3
log "seeding s3://$SRC"
"$VENV/bin/python" deploy/local/seed.py --endpoint "$AWS_ENDPOINT_URL" \
  --source "$SRC" --directory-bucket "$DIR" --objects "$OBJECTS"

if [ "$REPLICAS" = 1 ]; then
  INDEX="sqlite://$STATE/index.db"
else
  # One DynamoDB index for the fleet, created the way an operator would.
  INDEX="dynamodb://quickstart"
  log "creating the DynamoDB tables of $INDEX"
  "$BIN/expresscache-server" index create --index "$INDEX"
fi
ENDPOINTS=()
for i in $(seq 1 "$REPLICAS"); do
  PORT=$(free_port)
  log "starting expresscache-server replica-$i on 127.0.0.1:$PORT (index $INDEX, log: $STATE/server-$i.log)"
  "$BIN/expresscache-server" --listen "127.0.0.1:$PORT" --index "$INDEX" \
    --replica-id "replica-$i" >"$STATE/server-$i.log" 2>&1 &
  PIDS+=($!)
  wait_port "$PORT"
  ENDPOINTS+=("http://127.0.0.1:$PORT")
done
# Every replica's endpoint: the CLI uses the first that answers and fails
# over to the next.
EXPRESSCACHE_ENDPOINT=$(IFS=,; echo "${ENDPOINTS[*]}")
export EXPRESSCACHE_ENDPOINT

echo
log "first warm: copies everything under datasets/2026-11-26/ and datasets/2026-11-25/"
set -x
"$BIN/expresscache" warm --bucket "$SRC" --prefix datasets/2026-11-26/ \
  --prefix datasets/2026-11-25/ --directory-bucket "$DIR" --ttl 2h --log-interval 1s
{ set +x; } 2>/dev/null

echo
log "second warm of the same prefixes: everything is already cached"
set -x
"$BIN/expresscache" warm --bucket "$SRC" --prefix datasets/2026-11-26/ \
  --prefix datasets/2026-11-25/ --directory-bucket "$DIR" --ttl 2h
"$BIN/expresscache" status --directory-bucket "$DIR" --prefix datasets/2026-11-26/ --prefix datasets/
{ set +x; } 2>/dev/null

echo
log "dry run of the whole bucket: what a warm would copy, and what it would cost"
set -x
"$BIN/expresscache" warm --dry-run --bucket "$SRC" --prefix "" --directory-bucket "$DIR"
{ set +x; } 2>/dev/null
if [ "$REPLICAS" -gt 1 ]; then
  echo
  log "the last replica sees every operation of the fleet"
  set -x
  "$BIN/expresscache" --endpoint "${ENDPOINTS[-1]}" ops
  { set +x; } 2>/dev/null
fi

echo
if [ "$KEEP" = 1 ]; then
  cat <<MSG
Servers left running (pids ${PIDS[*]}). Try:
  export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
  export EXPRESSCACHE_ENDPOINT=$EXPRESSCACHE_ENDPOINT
  $BIN/expresscache warm --bucket $SRC --prefix "" --directory-bucket $DIR --ttl 1h
  $BIN/expresscache evict --directory-bucket $DIR --prefix datasets/2026-11-25/
Stop them with: kill ${PIDS[*]}
MSG
else
  log "quick start done; servers stopped"
fi
