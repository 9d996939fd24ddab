#!/usr/bin/env bash
# The job-array load benchmark on a fleet: three replicas sharing one
# DynamoDB index through the fault proxy, which enforces a per-item write
# rate (DynamoDB serves one item about 1,000 writes/s; scaled here to what
# the local index serves, 25/s by default). The index is moto, or with
# --dynamodb-local AWS's DynamoDB Local (scripts/lib.sh
# ensure_dynamodb_local), which serves requests side by side where moto
# serves about 100-150 a second one at a time: a job array of 1,000
# launchers needs it. S3 is moto either way. Loopback only; not a test.
# Runs:
#   1. one warm alone on the fleet, cold, then cached: the baselines;
#   2. the herd cold: N launchers at once, a third on each replica (one
#      process per replica, N/3 gRPC streams each), after an Evict;
#   3. the herd cached;
# and reports for each: errors, source listings (all replicas), p50/p99
# time-to-ready and p99 over the lone warm's, DynamoDB writes per launcher,
# the hottest item's writes and how many writes the per-item limit threw
# back; and DynamoDB requests per launcher by request and table, and the
# replicas' index calls per launcher by call. Called by `bench/herd.sh --index dynamodb`.
#
#   bench/herd_fleet.sh [--n 1000] [--objects 2000] [--item-writes 25] [--dynamodb-local]
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

N=1000
OBJECTS=2000
ITEM_WRITES=25
DDB_LOCAL=
while [ $# -gt 0 ]; do
  case $1 in
    --n) N=$2; shift ;;
    --objects) OBJECTS=$2; shift ;;
    --item-writes) ITEM_WRITES=$2; shift ;;
    --index) shift ;; # dynamodb: what brought us here
    --dynamodb-local) DDB_LOCAL=1 ;;
    *) echo "usage: $0 [--n 1000] [--objects 2000] [--item-writes 25] [--dynamodb-local]" >&2; exit 2 ;;
  esac
  shift
done

ensure_rust
ensure_venv
[ -n "$DDB_LOCAL" ] && ensure_dynamodb_local
log "building release binaries (server, CLI, herd, fault proxy)"
cargo build --locked --release -q -p expresscache-server -p expresscache-client \
  --features expresscache-client/cli,expresscache-server/testing --bins \
  --example herd --example fault_proxy
BIN=$REPO_ROOT/target/release
STATE=$(mktemp -d)
PIDS=()
cleanup() {
  # Last started first: the replicas drain while the index and S3 still
  # answer (against a stopped index each call is retried for the index
  # budget, and replicas stopped with it outlived a run by an hour), each
  # given 20 s before it is killed outright.
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # HERD_KEEP=1 keeps the servers' and the proxy's logs for a look.
  if [ -n "${HERD_KEEP:-}" ]; then log "logs kept in $STATE"; else rm -rf "$STATE"; fi
}
trap cleanup EXIT

MOTO_PORT=$(free_port)
MOTO=http://127.0.0.1:$MOTO_PORT
export AWS_ENDPOINT_URL=$MOTO AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$STATE/moto.log" 2>&1 &
PIDS+=($!)
wait_port "$MOTO_PORT"

SRC=herd-source
DIR=herd--use1-az4--x-s3
log "seeding $OBJECTS objects in 3 prefixes"
"$VENV/bin/python" - "$SRC" "$DIR" "$OBJECTS" <<'PY'
import os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config
src, dest, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(
    s3={"disable_s3_express_session_auth": True}, max_pool_connections=32))
s3.create_bucket(Bucket=src)
s3.create_bucket(Bucket=dest, CreateBucketConfiguration={
    "Location": {"Type": "AvailabilityZone", "Name": "use1-az4"},
    "Bucket": {"DataRedundancy": "SingleAvailabilityZone", "Type": "Directory"}})
body = os.urandom(1024)
with ThreadPoolExecutor(32) as pool:
    list(pool.map(lambda i: s3.put_object(Bucket=src, Key=f"d{i % 3}/part-{i:05d}", Body=body),
                  range(n)))
PY

DYNAMO=$MOTO
if [ -n "$DDB_LOCAL" ]; then
  DDB_PORT=$(free_port)
  DYNAMO=http://127.0.0.1:$DDB_PORT
  # -sharedDb: one database whatever the credentials and region.
  java -Djava.library.path="$DYNAMODB_LOCAL/DynamoDBLocal_lib" -jar "$DYNAMODB_LOCAL/DynamoDBLocal.jar" \
    -inMemory -sharedDb -port "$DDB_PORT" >"$STATE/dynamodb-local.log" 2>&1 &
  PIDS+=($!)
  wait_port "$DDB_PORT" 60
  log "index on DynamoDB Local at $DYNAMO"
fi

INDEX=dynamodb://herd
AWS_ENDPOINT_URL_DYNAMODB=$DYNAMO "$BIN/expresscache-server" index create --index "$INDEX" >/dev/null
"$BIN/examples/fault_proxy" --upstream "$DYNAMO" --item-writes-per-second "$ITEM_WRITES" \
  --stats "$STATE/proxy.json" >"$STATE/proxy.out" 2>"$STATE/proxy.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$STATE/proxy.out" 2>/dev/null && break; sleep 0.1; done
PROXY=$(awk '/listening/ { print $2 }' "$STATE/proxy.out")
log "DynamoDB through $PROXY, at most $ITEM_WRITES writes/s per item"

ENDPOINTS=()
METRICS=()
for i in 1 2 3; do
  port=$(free_port)
  mport=$(free_port)
  AWS_ENDPOINT_URL_DYNAMODB=$PROXY "$BIN/expresscache-server" --listen "127.0.0.1:$port" \
    --index "$INDEX" --replica-id "replica-$i" --metrics-listen "127.0.0.1:$mport" \
    >"$STATE/server-$i.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
  ENDPOINTS+=("http://127.0.0.1:$port")
  METRICS+=("$mport")
done

lists() { # source listing requests, all replicas
  local total=0 n
  for m in "${METRICS[@]}"; do
    n=$(curl -s "http://127.0.0.1:$m/metrics" |
      awk '$1 == "expresscache_s3_list_requests_total" { print $2 }')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}
index_calls() { # the replicas' index calls so far, by call (all replicas), as JSON;
  # "seconds:CALL" keys hold the seconds they took in all
  for m in "${METRICS[@]}"; do curl -s "http://127.0.0.1:$m/metrics"; done | python3 -c '
import json, re, sys
calls = {}
for line in sys.stdin:
    for suffix, prefix in (("_count{", ""), ("_sum{", "seconds:")):
        if line.startswith("expresscache_index_request_duration_seconds" + suffix):
            op = prefix + re.search(r"operation=\"([^\"]+)\"", line).group(1)
            calls[op] = calls.get(op, 0) + float(line.split()[-1])
print(json.dumps(calls))'
}
writes() { python3 -c "import json; print(json.load(open('$STATE/proxy.json'))['dynamo_writes'])"; }
stat() { python3 -c "import json; print(json.load(open('$STATE/proxy.json'))['$1'])"; }
fleet() { # NAME N: N launchers spread over the replicas; prints NAME and JSON
  local name=$1 n=$2 before after wbefore wafter tbefore
  sleep 0.6 # the proxy's stats file is at most half a second old
  before=$(lists); wbefore=$(writes); tbefore=$(stat item_throttles)
  cp "$STATE/proxy.json" "$STATE/$name-proxy-before.json"
  index_calls >"$STATE/$name-calls-before.json"
  local outs=()
  for i in 0 1 2; do
    local share=$(((n + 2 - i) / 3))
    [ "$share" -eq 0 ] && continue
    "$BIN/examples/herd" --endpoint "${ENDPOINTS[$i]}" --bucket "$SRC" --directory-bucket "$DIR" \
      --prefix d0/ --prefix d1/ --prefix d2/ --n "$share" >"$STATE/$name-$i.json" &
    outs+=($!)
  done
  for pid in "${outs[@]}"; do wait "$pid"; done
  sleep 0.6
  after=$(lists); wafter=$(writes)
  index_calls >"$STATE/$name-calls-after.json"
  python3 - "$name" "$n" "$((after - before))" "$((wafter - wbefore))" \
    "$(( $(stat item_throttles) - tbefore ))" "$(stat hottest_item_writes)" \
    "$STATE/$name-proxy-before.json" "$STATE/proxy.json" \
    "$STATE/$name-calls-before.json" "$STATE/$name-calls-after.json" \
    "$STATE/$name"-[0-9].json >>"$STATE/results" <<'PY'
import json, sys
name, n, lists, writes, throttled, hottest, before, after, cbefore, cafter = sys.argv[1:11]
parts = [json.loads(open(p).read()) for p in sys.argv[11:]]
def per_launcher(b, a):
    return {k: round((v - b.get(k, 0)) / int(n), 2) for k, v in a.items() if v > b.get(k, 0)}
b, a = (json.load(open(p)).get("dynamo_by_call", {}) for p in (before, after))
by_call = per_launcher(b, a)
cb, ca = (json.load(open(p)) for p in (cbefore, cafter))
counted = {k: v for k, v in per_launcher(cb, ca).items() if not k.startswith("seconds:")}
by_index_call = counted
# Mean seconds an index call took (queueing in the replica included).
mean_s = {k: round((ca.get("seconds:" + k, 0) - cb.get("seconds:" + k, 0))
                   / ((ca[k] - cb.get(k, 0)) or 1), 3) for k in counted}
errors = sum(p["errors"] for p in parts)
print(name, lists, json.dumps({
    "n": int(n), "errors": errors,
    "p50_s": max(p["p50_s"] for p in parts), "p99_s": max(p["p99_s"] for p in parts),
    "writes_per_launcher": int(writes) / int(n), "item_throttles": int(throttled),
    "hottest_item_writes": int(hottest), "calls_per_launcher": by_call,
    "index_calls_per_launcher": by_index_call, "index_call_mean_s": mean_s}))
PY
  log "$name: $(tail -1 "$STATE/results")"
}
evict() {
  "$BIN/expresscache" --endpoint "${ENDPOINTS[0]}" evict --directory-bucket "$DIR" \
    --prefix d0/ --prefix d1/ --prefix d2/ >/dev/null
}

log "one warm alone, cold"
fleet alone-cold 1
log "one warm alone, cached"
fleet alone-cached 1
evict
log "$N launchers over 3 replicas, cold"
fleet herd-cold "$N"
log "$N launchers over 3 replicas, cached"
fleet herd-cached "$N"

python3 - "$STATE/results" <<'PY'
import json, sys
rows = [(l.split(" ", 2)) for l in open(sys.argv[1])]
rows = [(n, int(li), json.loads(js)) for n, li, js in rows]
base = {n.split("-")[1]: r["p99_s"] for n, _, r in rows if n.startswith("alone")}
lists_alone = {n.split("-")[1]: l for n, l, _ in rows if n.startswith("alone")}
print()
print("| run | launchers | errors | listing requests | p50 (s) | p99 (s) | p99 / one warm alone "
      "| index writes per launcher | writes the per-item limit threw back |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, lists, r in rows:
    kind = "cold" if "cold" in name else "cached"
    ratio = r["p99_s"] / base[kind] if base[kind] else float("nan")
    print(f"| {name} | {r['n']} | {r['errors']} | {lists} (alone: {lists_alone[kind]}) | "
          f"{r['p50_s']:.3f} | {r['p99_s']:.3f} | {ratio:.2f} | {r['writes_per_launcher']:.1f} | "
          f"{r['item_throttles']} |")
print()
hot = json.load(open(sys.argv[1].rsplit("/", 1)[0] + "/proxy.json"))
print(f"hottest item: {hot['hottest_item_writes']} writes in all ({hot['hottest_item']})")
print()
for title, key in (("DynamoDB calls per launcher, by call and table:", "calls_per_launcher"),
                   ("Index calls per launcher, by the replicas' index call (one may send several "
                    "requests):", "index_calls_per_launcher"),
                   ("Mean seconds per index call, its wait for a slot in the replica included:",
                    "index_call_mean_s")):
    print(title)
    for name, _, r in rows:
        calls = ", ".join(f"{k} {v}" for k, v in sorted(r.get(key, {}).items(),
                                                         key=lambda kv: -kv[1]))
        print(f"  {name}: {calls}")
    print()
PY
