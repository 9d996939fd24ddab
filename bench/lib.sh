# shellcheck shell=bash
# Shared by the benchmarks: their state directory, the processes they
# start, and the S3-compatible server they run against. Source after
# scripts/lib.sh.

# A fresh state directory $1 (STATE), and every process added to PIDS
# stopped when the script exits (each is started directly, so its PID is
# the process itself, not a subshell around it). The aws cli's settings
# stay in this run's state, not in ~/.aws.
bench_state() {
  STATE=$1
  rm -rf "$STATE" && mkdir -p "$STATE"
  PIDS=()
  trap bench_cleanup EXIT
  export AWS_CONFIG_FILE="$STATE/aws-config"
}
# Times a command, its output in $STATE/NAME.out and .err; records seconds
# under NAME ($1) in SECS; fails loudly if it fails.
declare -A SECS
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

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

# Picks the server: $1 if given, else garage if installed, else moto.
# Sets SERVER and GARAGE_BIN.
pick_s3_server() {
  SERVER=${1:-}
  GARAGE_BIN=$(command -v garage || true)
  [ -z "$GARAGE_BIN" ] && [ -x "$HOME/.local/garage/bin/garage" ] && GARAGE_BIN="$HOME/.local/garage/bin/garage"
  if [ -z "$SERVER" ]; then
    if [ -n "$GARAGE_BIN" ]; then SERVER=garage; else SERVER=moto; fi
  fi
}

G() { "$GARAGE_BIN" -c "$STATE/garage.toml" "$@"; }

# Starts $SERVER on a free port; sets S3_PORT, S3_ENDPOINT, DEST_SUFFIX
# (what a directory bucket's name ends with: none on garage, whose
# destinations are plain buckets) and the AWS credentials.
# shellcheck disable=SC2034 # DEST_SUFFIX is for the scripts that source this
start_s3_server() {
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
      log "starting garage ($("$GARAGE_BIN" --version 2>/dev/null | head -1)) on 127.0.0.1:$S3_PORT"
      "$GARAGE_BIN" -c "$STATE/garage.toml" server >"$STATE/garage.log" 2>&1 &
      PIDS+=($!)
      wait_port "$S3_PORT"
      sleep 1
      NODE=$(G node id -q 2>/dev/null | cut -d@ -f1)
      G layout assign -z dc1 -c 10G "$NODE" >/dev/null
      G layout apply --version 1 >/dev/null
      KEY_OUT=$(G key create bench-key)
      AWS_ACCESS_KEY_ID=$(echo "$KEY_OUT" | awk '/Key ID/{print $NF}')
      AWS_SECRET_ACCESS_KEY=$(echo "$KEY_OUT" | awk '/Secret key/{print $NF}')
      export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
      # The SDKs sign "--x-s3" names for S3 Express, which garage rejects:
      # destinations are plain buckets, accepted by the server flag below.
      DEST_SUFFIX=""
      ;;
    *) echo "unknown server $SERVER" >&2; exit 2 ;;
  esac
  S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
}

make_bucket() {
  if [ "$SERVER" = garage ]; then
    G bucket create "$1" >/dev/null && G bucket allow --read --write --owner "$1" --key bench-key >/dev/null
  elif [ "$2" = directory ]; then
    "$VENV/bin/python" - "$S3_ENDPOINT" "$1" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"disable_s3_express_session_auth": True}))
s3.create_bucket(Bucket=sys.argv[2], CreateBucketConfiguration={
    "Location": {"Type": "AvailabilityZone", "Name": "use1-az4"},
    "Bucket": {"DataRedundancy": "SingleAvailabilityZone", "Type": "Directory"}})
PY
  else
    "$VENV/bin/aws" --endpoint-url "$S3_ENDPOINT" s3api create-bucket --bucket "$1" >/dev/null
  fi
}
