#!/usr/bin/env bash
# Load benchmark: a job array's launchers asking for the same data at once.
# Loopback only (moto); not a test. Against one expresscache-server at its
# defaults (release build), it runs, in order:
#   1. one warm alone, cold, then cached: the baselines;
#   2. the herd cold: N identical warms at once (one process, N gRPC
#      streams over one connection), after an Evict made the data cold;
#   3. the herd cached;
#   4. the herd cached, mixed: 10% of the launchers ask for a prefix of
#      their own;
#   5. the herd cached through the CLI: P `expresscache warm` processes;
# and reports for each: source listing requests (the server's
# expresscache_s3_list_requests_total), errors, p50/p99 time-to-ready, p99
# over the lone warm's; and the server's peak RSS and open descriptors.
#
#   bench/herd.sh [--n 1000] [--processes 200] [--objects 2000]
#   bench/herd.sh --index dynamodb [--n 1000] [--item-writes 25] [--dynamodb-local]   (bench/herd_fleet.sh)
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

# On a fleet of three replicas sharing a DynamoDB index: bench/herd_fleet.sh.
for a in "$@"; do
  if [ "$a" = dynamodb ]; then
    exec "$(dirname "$0")/herd_fleet.sh" "$@"
  fi
done

N=1000
PROCESSES=200
OBJECTS=2000
while [ $# -gt 0 ]; do
  case $1 in
    --n) N=$2; shift ;;
    --processes) PROCESSES=$2; shift ;;
    --objects) OBJECTS=$2; shift ;;
    *) echo "usage: $0 [--n 1000] [--processes 200] [--objects 2000]" >&2; exit 2 ;;
  esac
  shift
done

ensure_rust
ensure_venv
log "building release binaries (server, CLI, herd)"
cargo build --locked --release -q -p expresscache-server -p expresscache-client \
  --features expresscache-client/cli --bins --example herd
BIN=$REPO_ROOT/target/release
STATE=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$STATE"
}
trap cleanup EXIT

S3_PORT=$(free_port)
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE/moto.log" 2>&1 &
PIDS+=($!)
wait_port "$S3_PORT"

SRC=herd-source
DIR=herd--use1-az4--x-s3
log "seeding $OBJECTS objects in 3 prefixes, and 100 prefixes of 5 for the mixed run"
"$VENV/bin/python" - "$SRC" "$DIR" "$OBJECTS" <<'PY'
import os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config
src, dest, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
# CreateBucket of a directory bucket is regional: no S3 Express session.
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(
    s3={"disable_s3_express_session_auth": True}, max_pool_connections=32))
s3.create_bucket(Bucket=src)
s3.create_bucket(Bucket=dest, CreateBucketConfiguration={
    "Location": {"Type": "AvailabilityZone", "Name": "use1-az4"},
    "Bucket": {"DataRedundancy": "SingleAvailabilityZone", "Type": "Directory"}})
keys = [f"d{i % 3}/part-{i:05d}" for i in range(n)] + \
       [f"u/{j:03d}/obj-{k}" for j in range(100) for k in range(5)]
body = os.urandom(1024)
with ThreadPoolExecutor(32) as pool:
    list(pool.map(lambda k: s3.put_object(Bucket=src, Key=k, Body=body), keys))
PY

GRPC_PORT=$(free_port)
METRICS_PORT=$(free_port)
ENDPOINT=http://127.0.0.1:$GRPC_PORT
"$BIN/expresscache-server" --listen "127.0.0.1:$GRPC_PORT" --index "sqlite://$STATE/index.db" \
  --metrics-listen "127.0.0.1:$METRICS_PORT" >"$STATE/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
wait_port "$GRPC_PORT"

# Peak open descriptors, sampled (peak RSS is the kernel's VmHWM).
(
  peak=0
  while kill -0 "$SERVER" 2>/dev/null; do
    n=$(find "/proc/$SERVER/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    [ "$n" -gt "$peak" ] && peak=$n && echo "$peak" >"$STATE/fd-peak"
    sleep 0.2
  done
) &
PIDS+=($!)

lists() {
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '$1 == "expresscache_s3_list_requests_total" { print $2 }' | sed 's/^$/0/'
}
herd() { # NAME ARGS...: runs the herd example, prints NAME and its JSON
  local name=$1 before after out
  shift
  before=$(lists); before=${before:-0}
  out=$("$BIN/examples/herd" --endpoint "$ENDPOINT" --bucket "$SRC" --directory-bucket "$DIR" \
    --prefix d0/ --prefix d1/ --prefix d2/ "$@")
  after=$(lists)
  echo "$name $((after - before)) $out" >>"$STATE/results"
  log "$name: $((after - before)) listing requests; $out"
}
evict() {
  "$BIN/expresscache" --endpoint "$ENDPOINT" evict --directory-bucket "$DIR" \
    --prefix d0/ --prefix d1/ --prefix d2/ >/dev/null
}

log "one warm alone, cold"
herd alone-cold --n 1
log "one warm alone, cached"
herd alone-cached --n 1
evict
log "$N identical warms at once, cold"
herd herd-cold --n "$N"
log "$N identical warms at once, cached"
herd herd-cached --n "$N"
log "$N warms at once, cached, 10% of them of a prefix of their own"
herd herd-mixed --n "$N" --distinct $((N / 10))

log "$PROCESSES CLI processes at once, cached"
before=$(lists)
t0=$(date +%s.%N)
CLI_PIDS=()
for i in $(seq "$PROCESSES"); do
  (
    s=$(date +%s.%N)
    if "$BIN/expresscache" --endpoint "$ENDPOINT" warm --bucket "$SRC" --prefix d0/ --prefix d1/ \
      --prefix d2/ --directory-bucket "$DIR" --ttl 1h --output json >/dev/null 2>"$STATE/cli-$i.err"; then
      python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$s" >>"$STATE/cli-times"
    else
      echo error >>"$STATE/cli-errors"
    fi
  ) &
  CLI_PIDS+=($!)
done
for pid in "${CLI_PIDS[@]}"; do wait "$pid" || true; done
after=$(lists)
cli_errors=0
if [ -f "$STATE/cli-errors" ]; then cli_errors=$(wc -l <"$STATE/cli-errors"); fi
sort -n "$STATE/cli-times" >"$STATE/cli-sorted"
count=$(wc -l <"$STATE/cli-sorted")
p50=$(awk -v n="$count" 'NR == int((n - 1) * 0.5 + 0.5) + 1' "$STATE/cli-sorted")
p99=$(awk -v n="$count" 'NR == int((n - 1) * 0.99 + 0.5) + 1' "$STATE/cli-sorted")
echo "cli-cached $((after - before)) {\"n\":$PROCESSES,\"errors\":$cli_errors,\"p50_s\":$p50,\"p99_s\":$p99}" >>"$STATE/results"
log "CLI processes done in $(python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 2))" "$(date +%s.%N)" "$t0") s"

rss=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$SERVER/status")
fds=$(cat "$STATE/fd-peak" 2>/dev/null || echo "?")
python3 - "$STATE/results" "$rss" "$fds" <<'PY'
import json, sys
rows = []
for line in open(sys.argv[1]):
    name, lists, js = line.split(" ", 2)
    rows.append((name, int(lists), json.loads(js)))
alone = {n: r for n, _, r in [(n, l, r) for n, l, r in rows] if n.startswith("alone")}
base = {"cold": alone["alone-cold"]["p99_s"], "cached": alone["alone-cached"]["p99_s"]}
lists_alone = {n.split("-")[1]: l for n, l, _ in rows if n.startswith("alone")}
print()
print(f"| run | launchers | errors | listing requests | p50 (s) | p99 (s) | p99 / one warm alone |")
print(f"|---|---:|---:|---:|---:|---:|---:|")
for name, lists, r in rows:
    kind = "cold" if "cold" in name else "cached"
    ratio = r["p99_s"] / base[kind] if base[kind] else float("nan")
    print(f"| {name} | {r['n']} | {r['errors']} | {lists} (alone: {lists_alone[kind]}) | "
          f"{r['p50_s']:.3f} | {r['p99_s']:.3f} | {ratio:.2f} |")
print()
print(f"server peak RSS {sys.argv[2]} MiB, peak open descriptors {sys.argv[3]}")
PY
