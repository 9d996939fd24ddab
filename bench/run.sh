#!/usr/bin/env bash
# Benchmark: expresscache against the tools a user would otherwise pick, on
# the same S3-compatible server, the same objects, in the same run.
#
#   bench/run.sh [--objects N] [--size BYTES] [--server garage|moto] [--concurrency C] [--no-peers]
#
# Defaults: 20,000 objects of 4 KiB; garage if `garage` is on PATH (or in
# ~/.local/garage/bin; install it with `cargo install garage --locked`),
# moto otherwise. Each tool copies the source prefix server-side into its own
# destination bucket, cold, then re-runs (a re-run must find everything
# already there). Measured: wall time and objects/s of
#   - expresscache: cold warm, re-warm (all hits)
#   - rclone copy, s5cmd cp (+ sync re-run), aws s3 cp --recursive (+ sync)
#   - raw: the best CopyObject rate of a minimal concurrent loop (ceiling)
#   - list: a bare listing of the prefix (the floor for a re-warm)
# and the peak RSS of expresscache-server. Prints a table and the ratios.
# Not part of the test command: it takes minutes and needs release builds.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

OBJECTS=20000
SIZE=4096
SERVER=""
CONCURRENCY=64
PEERS=1
while [ $# -gt 0 ]; do
  case $1 in
    --objects) OBJECTS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --server) SERVER=$2; shift ;;
    --concurrency) CONCURRENCY=$2; shift ;;
    --no-peers) PEERS=0 ;;
    *) echo "usage: $0 [--objects N] [--size BYTES] [--server garage|moto] [--concurrency C] [--no-peers]" >&2; exit 2 ;;
  esac
  shift
done

GARAGE_BIN=$(command -v garage || true)
[ -z "$GARAGE_BIN" ] && [ -x "$HOME/.local/garage/bin/garage" ] && GARAGE_BIN="$HOME/.local/garage/bin/garage"
if [ -z "$SERVER" ]; then
  if [ -n "$GARAGE_BIN" ]; then SERVER=garage; else SERVER=moto; fi
fi

ensure_rust
ensure_venv
"$VENV/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt
ensure_apt rclone rclone
log "building release binaries"
cargo build --release --locked -p expresscache-server -p expresscache-client --bins --example raw_copy
REL="$REPO_ROOT/target/release"

STATE="$REPO_ROOT/.local/bench"
rm -rf "$STATE" && mkdir -p "$STATE"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

S3_PORT=$(free_port)
export AWS_REGION=us-east-1
case $SERVER in
  moto)
    log "starting moto on 127.0.0.1:$S3_PORT"
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE/moto.log" 2>&1 &
    PIDS+=($!)
    wait_port "$S3_PORT"
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
    DEST_SUFFIX="--use1-az4--x-s3"
    ;;
  garage)
    [ -n "$GARAGE_BIN" ] || { echo "garage not found: cargo install garage --locked" >&2; exit 1; }
    RPC_PORT=$(free_port); ADMIN_PORT=$(free_port)
    cat >"$STATE/garage.toml" <<EOF
metadata_dir = "$STATE/garage/meta"
data_dir = "$STATE/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
EOF
    G() { "$GARAGE_BIN" -c "$STATE/garage.toml" "$@"; }
    log "starting garage ($("$GARAGE_BIN" --version 2>/dev/null | head -1)) on 127.0.0.1:$S3_PORT"
    G server >"$STATE/garage.log" 2>&1 &
    PIDS+=($!)
    wait_port "$S3_PORT"
    sleep 1
    NODE=$(G node id -q 2>/dev/null | cut -d@ -f1)
    G layout assign -z dc1 -c 10G "$NODE" >/dev/null
    G layout apply --version 1 >/dev/null
    KEY_OUT=$(G key create bench-key)
    export AWS_ACCESS_KEY_ID=$(echo "$KEY_OUT" | awk '/Key ID/{print $NF}')
    export AWS_SECRET_ACCESS_KEY=$(echo "$KEY_OUT" | awk '/Secret key/{print $NF}')
    # The SDKs sign "--x-s3" names for S3 Express, which garage rejects:
    # destinations are plain buckets, accepted by the server flag below.
    DEST_SUFFIX=""
    ;;
  *) echo "unknown server $SERVER" >&2; exit 2 ;;
esac
ENDPOINT="http://127.0.0.1:$S3_PORT"
export AWS_ENDPOINT_URL="$ENDPOINT"

SRC=bench-src
DEST_OURS="bench-ours$DEST_SUFFIX"
DEST_RCLONE=bench-rclone DEST_S5=bench-s5cmd DEST_AWS=bench-aws DEST_RAW="bench-raw$DEST_SUFFIX"
S5() { "$VENV/bin/s5cmd" --endpoint-url "$ENDPOINT" "$@"; }
AWS() { "$VENV/bin/aws" --endpoint-url "$ENDPOINT" "$@"; }

log "creating buckets and $OBJECTS objects of $SIZE bytes"
for b in $SRC $DEST_RCLONE $DEST_S5 $DEST_AWS; do
  [ "$SERVER" = garage ] && G bucket create "$b" >/dev/null && G bucket allow --read --write --owner "$b" --key bench-key >/dev/null
  [ "$SERVER" = moto ] && AWS s3api create-bucket --bucket "$b" >/dev/null
done
for b in $DEST_OURS $DEST_RAW; do
  if [ "$SERVER" = garage ]; then
    G bucket create "$b" >/dev/null && G bucket allow --read --write --owner "$b" --key bench-key >/dev/null
  else
    "$VENV/bin/python" - "$ENDPOINT" "$b" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"disable_s3_express_session_auth": True}))
s3.create_bucket(Bucket=sys.argv[2], CreateBucketConfiguration={
    "Location": {"Type": "AvailabilityZone", "Name": "use1-az4"},
    "Bucket": {"DataRedundancy": "SingleAvailabilityZone", "Type": "Directory"}})
PY
  fi
done
mkdir -p "$STATE/data/d"
python3 - "$STATE/data/d" "$OBJECTS" "$SIZE" <<'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blob = os.urandom(size)
for i in range(n):
    with open(os.path.join(d, f"obj-{i:07d}.bin"), "wb") as f:
        f.write(blob[: size - 8] + i.to_bytes(8, "big"))
PY
S5 --numworkers 64 cp "$STATE/data/d/*" "s3://$SRC/d/" >/dev/null
rm -rf "$STATE/data"

GRPC_PORT=$(free_port)
"$REL/expresscache-server" --listen "127.0.0.1:$GRPC_PORT" --index "sqlite://$STATE/index.db" \
  --max-concurrency "$CONCURRENCY" --force-path-style true \
  $( [ "$SERVER" = garage ] && echo --allow-general-purpose-destination true ) \
  >"$STATE/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=($SERVER_PID)
wait_port "$GRPC_PORT"
export EXPRESSCACHE_ENDPOINT="http://127.0.0.1:$GRPC_PORT"

declare -A SECS
# Times a command; records seconds under $1; fails loudly if it fails.
timed() {
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  if ! "$@" >"$STATE/$name.out" 2>"$STATE/$name.err"; then
    echo "$name failed:" >&2; tail -n 20 "$STATE/$name.err" >&2; exit 1
  fi
  t1=$(date +%s.%N)
  SECS[$name]=$(python3 -c "print(f'{$t1-$t0:.3f}')")
  log "$name: ${SECS[$name]} s"
}
count() { S5 ls "s3://$1/d/*" 2>/dev/null | wc -l; }
check() {
  local n; n=$(count "$1")
  [ "$n" -eq "$OBJECTS" ] || { echo "$1 holds $n objects, expected $OBJECTS" >&2; exit 1; }
}

export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other \
  RCLONE_CONFIG_BENCH_ENDPOINT="$ENDPOINT" RCLONE_CONFIG_BENCH_REGION=us-east-1 \
  RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true

WARM=("$REL/expresscache" warm --bucket "$SRC" --prefix d/ --directory-bucket "$DEST_OURS" --ttl 1h --output json)
timed list "$REL/examples/raw_copy" list "$SRC" d/
timed raw "$REL/examples/raw_copy" copy "$SRC" "$DEST_RAW" d/ "$CONCURRENCY"
timed ours_cold "${WARM[@]}"
check "$DEST_OURS"
timed ours_rerun "${WARM[@]}"
grep -q '"objects_hit":'"$OBJECTS" "$STATE/ours_rerun.out" || { echo "re-warm was not all hits" >&2; tail -n1 "$STATE/ours_rerun.out" >&2; exit 1; }
if [ "$PEERS" = 0 ]; then
  # Only expresscache and the yardsticks (e.g. for a 200,000-object RSS run).
  RSS_KB=$(awk '/VmHWM/{print $2}' "/proc/$SERVER_PID/status")
  echo
  echo "server: $SERVER; $OBJECTS objects x $SIZE B; concurrency $CONCURRENCY; peers skipped"
  for k in list raw ours_cold ours_rerun; do
    python3 -c "print(f'{\"$k\":<14}{${SECS[$k]}:>10.2f}{$OBJECTS / ${SECS[$k]}:>12.0f} objects/s')"
  done
  echo "expresscache-server peak RSS: $((RSS_KB / 1024)) MiB"
  exit 0
fi
# rclone's S3 backend cannot load AWS_CA_BUNDLE into its own transport, and
# the endpoint is plain HTTP anyway.
unset AWS_CA_BUNDLE
timed rclone_cold rclone copy "bench:$SRC/d" "bench:$DEST_RCLONE/d" --transfers "$CONCURRENCY" --checkers "$CONCURRENCY"
check "$DEST_RCLONE"
timed rclone_rerun rclone copy "bench:$SRC/d" "bench:$DEST_RCLONE/d" --transfers "$CONCURRENCY" --checkers "$CONCURRENCY"
timed s5cmd_cold S5 --numworkers "$CONCURRENCY" cp "s3://$SRC/d/*" "s3://$DEST_S5/d/"
check "$DEST_S5"
timed s5cmd_rerun S5 --numworkers "$CONCURRENCY" sync "s3://$SRC/d/*" "s3://$DEST_S5/d/"
AWS configure set default.s3.max_concurrent_requests "$CONCURRENCY" >/dev/null
timed aws_cold AWS s3 cp --recursive --only-show-errors "s3://$SRC/d/" "s3://$DEST_AWS/d/"
check "$DEST_AWS"
timed aws_rerun AWS s3 sync --only-show-errors "s3://$SRC/d/" "s3://$DEST_AWS/d/"
RSS_KB=$(awk '/VmHWM/{print $2}' "/proc/$SERVER_PID/status")

python3 - "$SERVER" "$OBJECTS" "$SIZE" "$CONCURRENCY" "$RSS_KB" \
  "${SECS[list]}" "${SECS[raw]}" "${SECS[ours_cold]}" "${SECS[ours_rerun]}" \
  "${SECS[rclone_cold]}" "${SECS[rclone_rerun]}" "${SECS[s5cmd_cold]}" "${SECS[s5cmd_rerun]}" \
  "${SECS[aws_cold]}" "${SECS[aws_rerun]}" <<'PY'
import sys, platform, os
server, n, size, conc, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
t = dict(zip(["list","raw","ours_cold","ours_rerun","rclone_cold","rclone_rerun","s5cmd_cold","s5cmd_rerun","aws_cold","aws_rerun"], map(float, sys.argv[6:])))
print()
print(f"server: {server}; {n} objects x {size} B; concurrency {conc}; {os.cpu_count()} cores; {platform.platform()}")
print(f"{'run':<14}{'seconds':>10}{'objects/s':>12}")
for k, v in t.items():
    print(f"{k:<14}{v:>10.2f}{n / v:>12.0f}")
print(f"expresscache-server peak RSS: {rss / 1024:.1f} MiB")
best_cold = min(t["rclone_cold"], t["s5cmd_cold"], t["aws_cold"])
best_rerun = min(t["rclone_rerun"], t["s5cmd_rerun"], t["aws_rerun"])
print()
print(f"cold:   ours / raw ceiling (rate)      = {t['raw'] / t['ours_cold']:.2f}   (target >= 0.9)")
print(f"cold:   ours / fastest peer (rate)     = {best_cold / t['ours_cold']:.2f}   (target >= 1.2)")
print(f"re-run: ours / bare listing (time)     = {t['ours_rerun'] / t['list']:.2f}   (target <= 1.5)")
print(f"re-run: fastest peer / ours (speed-up) = {best_rerun / t['ours_rerun']:.2f}   (target >= 5)")
PY
