#!/usr/bin/env bash
# Benchmark: expresscache against the tools a user would otherwise pick, on
# the same S3-compatible server, the same objects, in the same run; on
# loopback and, with --latency, behind a proxy that delays every byte (a
# real network's round trip, where the defaults must still be right).
#
#   bench/run.sh [--latency MS] [--objects N] [--size BYTES] [--tree K]
#                [--server garage|moto] [--raw-concurrency "64 256 512"] [--no-peers]
#                [--no-flat]          # skip f/ (e.g. a 1,000,000-object run)
#                [--raw-concurrency ""]  # skip the raw ceiling
#                [--trials N]         # paired cold runs behind the headline ratio (default 3)
#
# Defaults: 20,000 objects of 4 KiB; garage if `garage` is on PATH (or in
# ~/.local/garage/bin; install it with `cargo install garage --locked`),
# moto otherwise. Two source prefixes of N objects each: d/ spread over K
# sub-prefixes (default 20) and f/ flat. Each phase (loopback, then with
# --latency MS one-way delay, e.g. 25 = a 50 ms round trip) starts a fresh
# expresscache-server at its default settings (no flags but the endpoint's)
# and measures wall time and objects/s of
#   - expresscache: cold warm and re-warm of d/ (tree) and of f/ (flat)
#   - raw: a minimal concurrent CopyObject loop at each --raw-concurrency;
#     the best is the ceiling
#   - list: a bare sequential listing of d/ and of f/ (the floor for a
#     re-warm that lists one page after the other)
#   - s5cmd at its default (256 workers) and at the raw ceiling's
#     concurrency; rclone at --transfers 64 and at the ceiling's; aws s3 cp
#     at its default (10 requests), each cold and re-run (sync)
# and the peak RSS of expresscache-server. The headline ratio to s5cmd is
# the median of --trials paired cold runs of d/: in each, expresscache on an
# expresscache-server started for that one warm (the adaptive limit from its
# start, no connection kept) and s5cmd, each into fresh buckets, timed as the
# user's command from start to exit, the order alternating between trials.
# Prints a table and the ratios per phase. Not part of the test command: it
# takes minutes and needs release builds. Every process it starts is stopped
# when it exits.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
# The server at its defaults: no EXPRESSCACHE_* setting of the caller's
# shell reaches it, and no AWS_ENDPOINT_URL_S3 takes it past the proxy.
for v in $(compgen -e | grep -E '^(EXPRESSCACHE_|AWS_ENDPOINT_URL_)' || true); do unset "$v"; done

OBJECTS=20000
SIZE=4096
SERVER=""
LATENCY=""
TREE=20
RAW_CONCURRENCY="64 256 512"
PEERS=1
FLAT=1
TRIALS=3
usage="usage: $0 [--latency MS] [--objects N] [--size BYTES] [--tree K] [--server garage|moto] [--raw-concurrency \"64 256 512\"] [--no-peers] [--no-flat] [--trials N]"
while [ $# -gt 0 ]; do
  case $1 in
    --latency) LATENCY=$2; shift ;;
    --objects) OBJECTS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --tree) TREE=$2; shift ;;
    --server) SERVER=$2; shift ;;
    --raw-concurrency) RAW_CONCURRENCY=$2; shift ;;
    --no-peers) PEERS=0 ;;
    --no-flat) FLAT=0 ;;
    --trials) TRIALS=$2; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done

ensure_rust
ensure_venv
"$VENV/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt
ensure_apt rclone rclone
log "building release binaries"
cargo build --release --locked -p expresscache-server -p expresscache-client --features expresscache-client/cli --bins \
  --example raw_copy --example delay_proxy
REL="$REPO_ROOT/target/release"

bench_state "$REPO_ROOT/.local/bench"

pick_s3_server "$SERVER"
start_s3_server

SRC=bench-src
PHASES=(loopback)
[ -n "$LATENCY" ] && [ "$LATENCY" != 0 ] && PHASES+=("rtt$((LATENCY * 2))ms")
log "creating buckets"
make_bucket $SRC general
for phase in "${PHASES[@]}"; do
  make_bucket "ours-$phase$DEST_SUFFIX" directory
  make_bucket "raw-$phase$DEST_SUFFIX" directory
  for peer in s5d s5e rclone rclonee aws; do make_bucket "$peer-$phase" general; done
  if [ "$PEERS" = 1 ]; then
    for i in $(seq 1 "$TRIALS"); do
      make_bucket "ours-$phase-t$i$DEST_SUFFIX" directory
      make_bucket "s5t-$phase-t$i" general
    done
  fi
done

log "creating $OBJECTS objects of $SIZE bytes under d/ (over $TREE sub-prefixes)$( [ "$FLAT" = 1 ] && echo " and as many under f/ (flat)")"
mkdir -p "$STATE/data/d" "$STATE/data/f"
python3 - "$STATE/data" "$OBJECTS" "$SIZE" "$TREE" "$FLAT" <<'PY'
import os, sys
root, n, size, tree, flat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
blob = os.urandom(size)
for i in range(n):
    body = blob[: max(size - 8, 0)] + i.to_bytes(8, "big")[: size]
    sub = os.path.join(root, "d", f"part-{i % tree:03d}")
    os.makedirs(sub, exist_ok=True)
    paths = [os.path.join(sub, f"obj-{i:07d}.bin")]
    if flat:
        paths.append(os.path.join(root, "f", f"obj-{i:07d}.bin"))
    for path in paths:
        with open(path, "wb") as f:
            f.write(body)
PY
"$VENV/bin/s5cmd" --endpoint-url "$S3_ENDPOINT" --numworkers 64 cp "$STATE/data/*" "s3://$SRC/" >/dev/null
rm -rf "$STATE/data"

# Objects under d/ of bucket $1, straight from the server (not through the
# proxy).
count() { "$VENV/bin/s5cmd" --endpoint-url "$S3_ENDPOINT" ls "s3://$1/$2*" 2>/dev/null | wc -l; }
check() {
  local n; n=$(count "$1" "$2")
  [ "$n" -eq "$OBJECTS" ] || { echo "$1 holds $n objects under $2, expected $OBJECTS" >&2; exit 1; }
}

# Starts expresscache-server at its defaults (only what the endpoint needs)
# on index $2, logging to server-$1.log; sets server_pid and
# EXPRESSCACHE_ENDPOINT.
server_pid=""
start_server() {
  local grpc_port; grpc_port=$(free_port)
  # shellcheck disable=SC2046 # the garage flag is a list of words
  "$REL/expresscache-server" --listen "127.0.0.1:$grpc_port" --index "sqlite://$2" \
    --force-path-style true \
    $( [ "$SERVER" = garage ] && echo --allow-general-purpose-destination true ) \
    >>"$STATE/server-$1.log" 2>&1 &
  server_pid=$!
  PIDS+=("$server_pid")
  wait_port "$grpc_port"
  export EXPRESSCACHE_ENDPOINT="http://127.0.0.1:$grpc_port"
}
stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
peak_rss_kb() { awk '/VmHWM/{print $2}' "/proc/$server_pid/status"; }

run_phase() {
  local phase=$1 delay=$2 endpoint=$S3_ENDPOINT proxy_pid="" p=$1
  if [ "$delay" != 0 ]; then
    local port; port=$(free_port)
    "$REL/examples/delay_proxy" "127.0.0.1:$port" "127.0.0.1:$S3_PORT" "$delay" 2>"$STATE/proxy-$phase.log" &
    proxy_pid=$!
    PIDS+=("$proxy_pid")
    wait_port "$port"
    endpoint="http://127.0.0.1:$port"
  fi
  log "phase $phase: endpoint $endpoint"
  export AWS_ENDPOINT_URL="$endpoint"
  start_server "$phase" "$STATE/index-$phase.db"
  local dest="ours-$phase$DEST_SUFFIX" rss_kb
  local warm=("$REL/expresscache" warm --bucket "$SRC" --directory-bucket "$dest" --ttl 1h --output json)

  timed "$p.list_tree" "$REL/examples/raw_copy" list "$SRC" d/
  [ "$FLAT" = 1 ] && timed "$p.list_flat" "$REL/examples/raw_copy" list "$SRC" f/
  local best="" best_c=""
  for c in $RAW_CONCURRENCY; do
    timed "$p.raw_$c" "$REL/examples/raw_copy" copy "$SRC" "raw-$phase$DEST_SUFFIX" d/ "$c"
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if ${SECS[$p.raw_$c]} < $best else 1)"; then
      best=${SECS[$p.raw_$c]}; best_c=$c
    fi
  done
  [ -n "$best" ] && SECS[$p.raw]=$best
  echo "${best_c:--}" >"$STATE/$p.raw_best"
  timed "$p.ours_cold" "${warm[@]}" --prefix d/
  check "$dest" d/
  timed "$p.ours_rerun" "${warm[@]}" --prefix d/
  grep -q '"objects_hit":"'"$OBJECTS"'"' "$STATE/$p.ours_rerun.out" || { echo "re-warm was not all hits" >&2; tail -n1 "$STATE/$p.ours_rerun.out" >&2; exit 1; }
  rss_kb=$(peak_rss_kb)
  if [ "$FLAT" = 1 ]; then
    # A fresh server (same index) for the flat cold warm too: the adaptive
    # limit is per destination bucket and lives as long as the process, so
    # it would otherwise start where the d/ warm left it.
    stop_server
    start_server "$phase" "$STATE/index-$phase.db"
    timed "$p.ours_flat_cold" "${warm[@]}" --prefix f/
    check "$dest" f/
    timed "$p.ours_flat_rerun" "${warm[@]}" --prefix f/
    grep -q '"objects_hit":"'"$OBJECTS"'"' "$STATE/$p.ours_flat_rerun.out" || { echo "flat re-warm was not all hits" >&2; exit 1; }
  fi
  local rss2; rss2=$(peak_rss_kb)
  [ "$rss2" -gt "$rss_kb" ] && rss_kb=$rss2
  echo "$rss_kb" >"$STATE/$p.rss_kb"
  cat "$STATE/index-$phase.db"* | wc -c >"$STATE/$p.index_bytes"
  stop_server

  if [ "$PEERS" = 1 ]; then
    local S5=("$VENV/bin/s5cmd" --endpoint-url "$endpoint")
    # The headline: paired cold runs of d/ as a user runs them, each into
    # fresh buckets; expresscache on a server started for that warm alone;
    # the order alternates, so neither tool always runs second.
    local i who
    for i in $(seq 1 "$TRIALS"); do
      for who in $( [ $((i % 2)) = 1 ] && echo "ours s5cmd" || echo "s5cmd ours" ); do
        if [ "$who" = ours ]; then
          start_server "$phase" "$STATE/index-$phase-t$i.db"
          timed "$p.t$i.ours_cold" "$REL/expresscache" warm --bucket "$SRC" --prefix d/ \
            --directory-bucket "ours-$phase-t$i$DEST_SUFFIX" --ttl 1h --output json
          stop_server
          check "ours-$phase-t$i$DEST_SUFFIX" d/
        else
          timed "$p.t$i.s5cmd_cold" "${S5[@]}" cp "s3://$SRC/d/*" "s3://s5t-$phase-t$i/d/"
          check "s5t-$phase-t$i" d/
        fi
      done
    done
    timed "$p.s5cmd_default_cold" "${S5[@]}" cp "s3://$SRC/d/*" "s3://s5d-$phase/d/"
    check "s5d-$phase" d/
    timed "$p.s5cmd_default_rerun" "${S5[@]}" sync "s3://$SRC/d/*" "s3://s5d-$phase/d/"
    timed "$p.s5cmd_equal_cold" "${S5[@]}" --numworkers "$best_c" cp "s3://$SRC/d/*" "s3://s5e-$phase/d/"
    check "s5e-$phase" d/
    # rclone's S3 backend cannot load AWS_CA_BUNDLE into its own transport,
    # and the endpoint is plain HTTP anyway.
    export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other \
      RCLONE_CONFIG_BENCH_ENDPOINT="$endpoint" RCLONE_CONFIG_BENCH_REGION=us-east-1 \
      RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
      RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true
    timed "$p.rclone_64_cold" env -u AWS_CA_BUNDLE rclone copy "bench:$SRC/d" "bench:rclone-$phase/d" --transfers 64 --checkers 64
    check "rclone-$phase" d/
    timed "$p.rclone_64_rerun" env -u AWS_CA_BUNDLE rclone copy "bench:$SRC/d" "bench:rclone-$phase/d" --transfers 64 --checkers 64
    timed "$p.rclone_equal_cold" env -u AWS_CA_BUNDLE rclone copy "bench:$SRC/d" "bench:rclonee-$phase/d" --transfers "$best_c" --checkers "$best_c"
    check "rclonee-$phase" d/
    local AWS=("$VENV/bin/aws" --endpoint-url "$endpoint")
    timed "$p.aws_default_cold" "${AWS[@]}" s3 cp --recursive --only-show-errors "s3://$SRC/d/" "s3://aws-$phase/d/"
    check "aws-$phase" d/
    timed "$p.aws_default_rerun" "${AWS[@]}" s3 sync --only-show-errors "s3://$SRC/d/" "s3://aws-$phase/d/"
  fi
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; fi
}

run_phase loopback 0
[ "${#PHASES[@]}" -gt 1 ] && run_phase "${PHASES[1]}" "$LATENCY"

# One table per phase: seconds and objects/s of each run, then the ratios
# the targets are stated in.
for phase in "${PHASES[@]}"; do
  for k in "${!SECS[@]}"; do
    case $k in "$phase".*) echo "${k#"$phase".} ${SECS[$k]}" ;; esac
  done >"$STATE/$phase.secs"
  python3 - "$phase" "$SERVER" "$OBJECTS" "$SIZE" "$TREE" "$(cat "$STATE/$phase.rss_kb")" \
    "$(cat "$STATE/$phase.raw_best")" "$STATE/$phase.secs" "$(cat "$STATE/$phase.index_bytes")" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$("$VENV/bin/s5cmd" version 2>/dev/null | head -1)" <<'PY'
import json, os, platform, re, statistics, sys
phase, server, n, size, tree, rss, raw_c, path, index_bytes, commit, s5v = sys.argv[1:12]
n, rss, index_bytes = int(n), int(rss), int(index_bytes)
t = dict(line.split() for line in open(path))
t = {k: float(v) for k, v in t.items()}
order = ["list_tree", "list_flat"] + sorted(k for k in t if k.startswith("raw_")) + [
    "raw", "ours_cold", "ours_rerun", "ours_flat_cold", "ours_flat_rerun",
    "s5cmd_default_cold", "s5cmd_default_rerun", "s5cmd_equal_cold",
    "rclone_64_cold", "rclone_64_rerun", "rclone_equal_cold",
    "aws_default_cold", "aws_default_rerun"]
print()
print(f"== {phase}: {server}; {n} objects x {size} B per prefix (d/ over {tree} sub-prefixes, f/ flat); "
      f"{os.cpu_count()} cores; {platform.platform()}; expresscache {commit}; s5cmd {s5v}")
print(f"{'run':<22}{'seconds':>10}{'objects/s':>12}")
for k in order:
    if k in t:
        label = f"raw (best: {raw_c})" if k == "raw" else k
        print(f"{label:<22}{t[k]:>10.2f}{n / t[k]:>12.0f}")
print(f"expresscache-server peak RSS: {rss / 1024:.1f} MiB; SQLite index on disk: {index_bytes / 2**20:.1f} MiB")
def ratio(label, value, target):
    print(f"{label:<52}= {value:5.2f}   (target {target})")
print()
if "raw" in t:
    ratio("cold:    ours / raw ceiling (rate)", t["raw"] / t["ours_cold"], ">= 0.9")
pairs = [(t[k], t[f"t{m[1]}.s5cmd_cold"]) for k in t
         if (m := re.fullmatch(r"t(\d+)\.ours_cold", k)) and f"t{m[1]}.s5cmd_cold" in t]
if pairs:
    rs = sorted(s / o for o, s in pairs)
    print(f"{'trials, d/ cold (median s)':<22}{statistics.median(o for o, _ in pairs):>10.2f}"
          f"  ours, fresh server;  s5cmd {statistics.median(s for _, s in pairs):.2f}")
    ratio(f"cold:    ours / s5cmd default, median of {len(rs)} (rate)", statistics.median(rs), ">= 1.2")
    print(f"{'':<10}each trial: {' '.join(f'{r:.2f}' for r in rs)}")
    # The adaptive limit each trial's warm reported, in order (a growth
    # that failed its trial shows as a long stay below the final limit).
    for k in sorted(k for k in t if k.endswith(".ours_cold") and k.startswith("t")):
        out = os.path.join(os.path.dirname(path), f"{phase}.{k}.out")
        limits = [json.loads(l).get("concurrency_limit") for l in open(out) if l.startswith("{")]
        print(f"{'':<10}{k}: limit {' '.join(str(x) for x in limits if x)}")
if "s5cmd_default_cold" in t:
    eq = min(t["s5cmd_equal_cold"], t["rclone_equal_cold"])
    ratio(f"cold:    ours / fastest peer at {raw_c} (rate)", eq / t["ours_cold"], "report")
ratio("re-warm: ours / bare listing, tree d/ (time)", t["ours_rerun"] / t["list_tree"],
      "<= 1.5" if phase == "loopback" else "<= 0.5")
if "list_flat" in t:
    ratio("re-warm: ours / bare listing, flat f/ (time)", t["ours_flat_rerun"] / t["list_flat"], "<= 1.5")
if "s5cmd_default_rerun" in t:
    best = min(t["s5cmd_default_rerun"], t["rclone_64_rerun"], t["aws_default_rerun"])
    ratio("re-run:  fastest peer / ours (speed-up)", best / t["ours_rerun"], ">= 5")
PY
done
