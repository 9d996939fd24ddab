#!/usr/bin/env bash
# Benchmark: large objects and mixed sizes, on an S3 whose server-side
# copies cost what S3's do, against the tools a user would otherwise pick,
# on the same server in the same run.
#
#   bench/large.sh [--quick] [--latency MS] [--request-mbps 90]
#                  [--aggregate-mbps 2000] [--mixes "small medium huge"]
#                  [--server garage|moto] [--ours-flags "..."]
#                  [--only-ours] [--huge-mib N]   # tuning: no peers; big objects of N MiB
#
# The simulated S3: every tool talks to bench's delay proxy (MS one way,
# default 25: a 50 ms round trip), which talks to the fault proxy in its
# copy-cost mode (server/examples/fault_proxy.rs), which holds each
# CopyObject and UploadPartCopy for its bytes at --request-mbps per request
# with all copies in flight sharing --aggregate-mbps, then forwards it to
# garage. garage copies a whole object by block references (nearly free)
# but hashes every byte of a part copy, a CPU cost S3 does not have: the
# proxy answers part copies itself, once charged, and completes their
# upload with one CopyObject of the source. The rates and their sources are
# in doc/PERFORMANCE.md ("Large objects and mixed sizes"). garage is
# installed if missing (cargo install garage --locked: slow, once); moto
# copies real bytes in Python and is far slower for large objects.
#
# Three mixes, each copied by every tool into fresh buckets, each made of
# garage's own copies of one uploaded object per size:
#   small   many ~0.35 MB objects (the sample's 1 TB scenario, scaled)
#   medium  ~9.5 MB objects (the sample's 3 TB scenario, scaled)
#   huge    a few multi-GB objects among small ones
# Tools: expresscache (a fresh server at its defaults per mix; the CLI's
# wall clock), a raw concurrent CopyObject loop at 64 and 256, aws s3 cp
# --recursive (defaults), s5cmd cp (defaults), rclone copy (defaults, and at
# the raw loop's best concurrency). After each run the destination's object
# count and total bytes are checked. Prints per mix MB/s and objects/s, the
# ratios, the limit the engine found; the last line is the huge mix's
# summary (when the huge mix runs with peers). The full run takes
# about 17 minutes (rclone's 4 transfers most of it); --quick about 7.5.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
for v in $(compgen -e | grep -E '^(EXPRESSCACHE_|AWS_ENDPOINT_URL_)' || true); do unset "$v"; done

QUICK=0
LATENCY=25
REQUEST_MBPS=90
AGGREGATE_MBPS=2000
MIXES="small medium huge"
SERVER=""
OURS_FLAGS=""
ONLY_OURS=0
HUGE_MIB=""
usage="usage: $0 [--quick] [--latency MS] [--request-mbps N] [--aggregate-mbps N] [--mixes \"small medium huge\"] [--server garage|moto] [--ours-flags \"...\"] [--only-ours] [--huge-mib N]"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --latency) LATENCY=$2; shift ;;
    --request-mbps) REQUEST_MBPS=$2; shift ;;
    --aggregate-mbps) AGGREGATE_MBPS=$2; shift ;;
    --mixes) MIXES=$2; shift ;;
    --server) SERVER=$2; shift ;;
    --ours-flags) OURS_FLAGS=$2; shift ;;
    --only-ours) ONLY_OURS=1 ;;
    --huge-mib) HUGE_MIB=$2; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done

# name: count x size (bytes) over sub-prefixes; huge adds big objects.
if [ "$QUICK" = 1 ]; then
  SMALL_N=4000; MEDIUM_N=800; HUGE_N=3; HUGE_SIZE=$((1024 * 1024 * 1024)); HUGE_SMALL_N=400
else
  SMALL_N=12000; MEDIUM_N=2400; HUGE_N=6; HUGE_SIZE=$((2 * 1024 * 1024 * 1024)); HUGE_SMALL_N=1200
fi
[ -n "$HUGE_MIB" ] && HUGE_SIZE=$((HUGE_MIB * 1024 * 1024))
SMALL_SIZE=350000
MEDIUM_SIZE=9500000

ensure_rust
ensure_venv
"$VENV/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt
ensure_apt rclone rclone
# garage unless --server says otherwise, installed if missing.
pick_s3_server "${SERVER:-garage}"
if [ "$SERVER" = garage ] && [ -z "$GARAGE_BIN" ]; then
  log "installing garage (cargo install garage --locked; once, it takes a while)"
  cargo install garage --locked
  pick_s3_server garage
fi
log "building release binaries"
cargo build --release --locked -p expresscache-server -p expresscache-client --features expresscache-client/cli --bins \
  --example raw_copy --example delay_proxy
# Apart: the proxy needs the testing feature. (Building examples turns it
# on for the binaries above too, through the dev-dependencies: they carry
# the test doubles, unused; the code measured is the same.)
cargo build --release --locked -p expresscache-server --features testing --example fault_proxy
REL="$REPO_ROOT/target/release"

bench_state "$REPO_ROOT/.local/bench-large"
start_s3_server

# The chain every tool talks to: delay proxy -> copy-cost proxy -> server.
"$REL/examples/fault_proxy" --upstream "$S3_ENDPOINT" --keep-host --virtual-part-copies \
  --copy-request-mbps "$REQUEST_MBPS" --copy-aggregate-mbps "$AGGREGATE_MBPS" \
  --stats "$STATE/cost.json" >"$STATE/cost-proxy.out" 2>"$STATE/cost-proxy.log" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q '^listening' "$STATE/cost-proxy.out" 2>/dev/null && break; sleep 0.1; done
COST_ADDR=$(awk '/^listening/{sub("http://", "", $2); print $2}' "$STATE/cost-proxy.out")
[ -n "$COST_ADDR" ] || { echo "the copy-cost proxy did not start" >&2; cat "$STATE/cost-proxy.log" >&2; exit 1; }
DELAY_PORT=$(free_port)
"$REL/examples/delay_proxy" "127.0.0.1:$DELAY_PORT" "$COST_ADDR" "$LATENCY" 2>"$STATE/delay-proxy.log" &
PIDS+=($!)
wait_port "$DELAY_PORT"
ENDPOINT="http://127.0.0.1:$DELAY_PORT"
log "tools -> $ENDPOINT (${LATENCY} ms each way) -> copy cost $COST_ADDR ($REQUEST_MBPS MB/s a request, $AGGREGATE_MBPS MB/s in all) -> $SERVER $S3_ENDPOINT"

SRC=large-src
make_bucket $SRC general

# Fills mix $1 with $2 objects of $3 bytes (keys $1/$4part-NN/obj-NNNNNN.bin,
# over 20 sub-prefixes): one object is uploaded straight to the server,
# the rest are the server's own copies of it (garage copies block
# references, so tens of GB cost seconds and no disk), made past the
# proxies.
fill() {
  local mix=$1 n=$2 size=$3 sub=${4:-}
  python3 - "$STATE/template" "$size" <<'PY'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
with open(path, "wb") as f:
    while size > 0:
        f.write(block[: min(size, len(block))])
        size -= min(size, len(block))
PY
  local template="s3://$SRC/templates/$mix$sub$size"
  # In 8 MiB parts: garage splits each part into 1 MiB blocks, so every
  # block then starts at a MiB boundary of the object and the tools' part
  # copies (MiB multiples) copy block references, not bytes, as S3's cost
  # is the proxy's to simulate.
  "$VENV/bin/s5cmd" --endpoint-url "$S3_ENDPOINT" cp --part-size 8 "$STATE/template" "$template" >/dev/null
  rm -f "$STATE/template"
  for i in $(seq 0 $((n - 1))); do
    printf 'cp %s s3://%s/%s/%spart-%02d/obj-%06d.bin\n' "$template" "$SRC" "$mix" "$sub" $((i % 20)) "$i"
  done >"$STATE/fill.txt"
  "$VENV/bin/s5cmd" --endpoint-url "$S3_ENDPOINT" --numworkers 64 run "$STATE/fill.txt" >/dev/null
}

declare -A OBJECTS BYTES
for mix in $MIXES; do
  case $mix in
    small) fill small "$SMALL_N" "$SMALL_SIZE"
      OBJECTS[small]=$SMALL_N; BYTES[small]=$((SMALL_N * SMALL_SIZE)) ;;
    medium) fill medium "$MEDIUM_N" "$MEDIUM_SIZE"
      OBJECTS[medium]=$MEDIUM_N; BYTES[medium]=$((MEDIUM_N * MEDIUM_SIZE)) ;;
    huge) fill huge "$HUGE_N" "$HUGE_SIZE" big/; fill huge "$HUGE_SMALL_N" "$SMALL_SIZE" small/
      OBJECTS[huge]=$((HUGE_N + HUGE_SMALL_N)); BYTES[huge]=$((HUGE_N * HUGE_SIZE + HUGE_SMALL_N * SMALL_SIZE)) ;;
    *) echo "unknown mix $mix" >&2; exit 2 ;;
  esac
  log "mix $mix: ${OBJECTS[$mix]} objects, $((BYTES[$mix] / 1000000)) MB in the source"
done

# Checks that bucket $1 holds mix $2 whole: every object, every byte (read
# straight from the server).
check() {
  local got
  got=$("$VENV/bin/s5cmd" --endpoint-url "$S3_ENDPOINT" ls "s3://$1/$2/*" | awk '{n++; b+=$(NF-1)} END {printf "%d %.0f", n, b}')
  [ "$got" = "${OBJECTS[$2]} ${BYTES[$2]}" ] || { echo "$1 holds $got (objects bytes) of $2, expected ${OBJECTS[$2]} ${BYTES[$2]}" >&2; exit 1; }
}

export AWS_ENDPOINT_URL="$ENDPOINT"
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other \
  RCLONE_CONFIG_BENCH_ENDPOINT="$ENDPOINT" RCLONE_CONFIG_BENCH_REGION=us-east-1 \
  RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true
S5=("$VENV/bin/s5cmd" --endpoint-url "$ENDPOINT")
AWS=("$VENV/bin/aws" --endpoint-url "$ENDPOINT")

for mix in $MIXES; do
  log "mix $mix"
  for t in ours raw64 raw256 aws s5cmd rclone rclonee; do
    make_bucket "$t-$mix$( [ "$t" = ours ] && echo "$DEST_SUFFIX")" "$( [ "$t" = ours ] && echo directory || echo general)"
  done
  # A fresh server per mix: the adaptive limit lives as long as the
  # process, and each mix must find its own.
  grpc_port=$(free_port)
  # shellcheck disable=SC2086,SC2046 # OURS_FLAGS and the garage flag are lists of words
  "$REL/expresscache-server" --listen "127.0.0.1:$grpc_port" --index "sqlite://$STATE/index-$mix.db" \
    --force-path-style true \
    $( [ "$SERVER" = garage ] && echo --allow-general-purpose-destination true ) $OURS_FLAGS \
    >"$STATE/server-$mix.log" 2>&1 &
  server_pid=$!
  PIDS+=("$server_pid")
  wait_port "$grpc_port"
  timed "$mix.ours" env EXPRESSCACHE_ENDPOINT="http://127.0.0.1:$grpc_port" "$REL/expresscache" warm --bucket "$SRC" \
    --prefix "$mix/" --directory-bucket "ours-$mix$DEST_SUFFIX" --ttl 1h --output json
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  check "ours-$mix$DEST_SUFFIX" "$mix"
  best="" best_c="-"
  if [ "$ONLY_OURS" = 1 ]; then echo - >"$STATE/$mix.raw_best"; continue; fi
  for c in 64 256; do
    timed "$mix.raw_$c" "$REL/examples/raw_copy" copy "$SRC" "raw$c-$mix" "$mix/" "$c"
    check "raw$c-$mix" "$mix"
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if ${SECS[$mix.raw_$c]} < $best else 1)"; then
      best=${SECS[$mix.raw_$c]}; best_c=$c
    fi
  done
  echo "$best_c" >"$STATE/$mix.raw_best"
  timed "$mix.aws_default" "${AWS[@]}" s3 cp --recursive --only-show-errors "s3://$SRC/$mix/" "s3://aws-$mix/$mix/"
  check "aws-$mix" "$mix"
  timed "$mix.s5cmd_default" "${S5[@]}" cp "s3://$SRC/$mix/*" "s3://s5cmd-$mix/$mix/"
  check "s5cmd-$mix" "$mix"
  timed "$mix.rclone_default" env -u AWS_CA_BUNDLE rclone copy "bench:$SRC/$mix" "bench:rclone-$mix/$mix"
  check "rclone-$mix" "$mix"
  timed "$mix.rclone_at_$best_c" env -u AWS_CA_BUNDLE rclone copy "bench:$SRC/$mix" "bench:rclonee-$mix/$mix" \
    --transfers "$best_c" --checkers "$best_c"
  check "rclonee-$mix" "$mix"
done
sleep 1 # the proxy writes its counts every half second
uncharged=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['copy_uncharged'])" "$STATE/cost.json")
[ "$uncharged" = 0 ] || { echo "$uncharged copies reached the server uncharged (source size unknown to the proxy)" >&2; exit 1; }

for k in "${!SECS[@]}"; do echo "$k ${SECS[$k]}"; done >"$STATE/secs"
for mix in $MIXES; do echo "$mix ${OBJECTS[$mix]} ${BYTES[$mix]} $(cat "$STATE/$mix.raw_best")"; done >"$STATE/mixes"
python3 - "$STATE" "$SERVER" "$LATENCY" "$REQUEST_MBPS" "$AGGREGATE_MBPS" "$QUICK" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$OURS_FLAGS" <<'PY'
import json, os, sys
state, server, latency, one, agg, quick, commit, flags = sys.argv[1:9]
agg = float(agg)
secs = {k: float(v) for k, v in (l.split() for l in open(os.path.join(state, "secs")))}
describe = {"small": "many ~0.35 MB objects", "medium": "~9.5 MB objects",
            "huge": "a few multi-GB objects among small ones"}
print(f"\n== large objects on {server}: {2 * int(latency)} ms round trip, copies at {one} MB/s a request, "
      f"{agg:.0f} MB/s in all; expresscache {commit}{' ' + flags if flags else ''}{' (quick)' if quick == '1' else ''}")
last = None
for line in open(os.path.join(state, "mixes")):
    mix, n, size, best_c = line.split()
    n, size = int(n), int(size)
    runs = {k.split(".", 1)[1]: v for k, v in secs.items() if k.startswith(mix + ".")}
    print(f"\n-- {mix}: {describe[mix]}: {n} objects, {size / 1e6:.0f} MB")
    print(f"{'run':<20}{'seconds':>9}{'MB/s':>9}{'objects/s':>11}")
    order = ["ours", "raw_64", "raw_256", "aws_default", "s5cmd_default", "rclone_default", f"rclone_at_{best_c}"]
    for k in order:
        if k in runs:
            print(f"{k:<20}{runs[k]:>9.2f}{size / 1e6 / runs[k]:>9.0f}{n / runs[k]:>11.0f}")
    ours = size / 1e6 / runs["ours"]
    peers = {k: size / 1e6 / runs[k] for k in ("aws_default", "s5cmd_default", "rclone_default") if k in runs}
    best = max(peers, key=peers.get) if peers else None
    limits = [json.loads(l).get("concurrency_limit") for l in open(os.path.join(state, f"{mix}.ours.out"))
              if l.startswith("{")]
    limits = [x for x in limits if x]
    if best:
        print(f"ours / best peer at its defaults ({best}), bytes/s = {ours / peers[best]:.2f}   (target >= 1.2)")
    print(f"ours / simulated aggregate ({agg:.0f} MB/s)       = {ours / agg:.2f}   (target >= 0.9 where reachable)")
    print(f"limit the engine found: {max(limits) if limits else '-'} at most, {limits[-1] if limits else '-'} at the end")
    if mix == "huge" and best:
        last = f"large: ours {ours:.0f} MB/s, best peer {peers[best]:.0f} MB/s ({best}), ratio {ours / peers[best]:.2f}, simulated limit {agg:.0f} MB/s"
if last:
    print()
    print(last)
PY
