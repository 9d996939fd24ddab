#!/usr/bin/env bash
# Checks every artifact of deploy/: installs the tools it needs, lints and
# validates what can be checked statically, then starts a local S3 and
# DynamoDB (moto) and a real expresscache-server on free ports and runs the
# live checks against them: the tables of the CloudFormation template, the
# container's and Kubernetes' health probes (also while the server drains),
# the Slurm/systemd warm wrapper with every exit status it can give and
# every setting it passes to the warm, and the server's Prometheus metrics
# against the alert rules and dashboard.
# Each check prints what it saw; a failure is reported and counted, never
# skipped, and fails the run.
#
#   deploy/test.sh          (EXPRESSCACHE_BIN_DIR: where the built binaries
#                            are, default target/debug)
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

BIN_DIR=${EXPRESSCACHE_BIN_DIR:-$REPO_ROOT/target/debug}
SERVER=$BIN_DIR/expresscache-server
CLI=$BIN_DIR/expresscache
for bin in "$SERVER" "$CLI"; do
  if [ ! -x "$bin" ]; then
    echo "deploy/test.sh: $bin not found: build it (cargo build --locked" \
      "-p expresscache-server -p expresscache-client --features expresscache-client/cli --bins) or set EXPRESSCACHE_BIN_DIR" >&2
    exit 1
  fi
done

ensure_deploy_tools
ensure_kubectl
ensure_apt shellcheck shellcheck
ensure_apt systemd-analyze systemd
ensure_apt sqlite3 sqlite3
ensure_apt promtool prometheus
PY=$VENV/bin/python
STARTED=$SECONDS

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

PASSED=0
FAILED=()
# check NAME COMMAND...: one check; its output is shown indented. COMMAND
# runs as an `if` condition, where `set -e` does not apply: the check
# functions below return non-zero explicitly at every step that can fail.
check() {
  local name=$1 start=$SECONDS
  shift
  log "$name"
  if "$@" >"$WORK/check.out" 2>&1; then
    PASSED=$((PASSED + 1))
    sed 's/^/    /' "$WORK/check.out"
    printf '    ok (%d s)\n' $((SECONDS - start))
  else
    sed 's/^/    /' "$WORK/check.out"
    printf '    FAILED: %s\n' "$name"
    FAILED+=("$name")
  fi
}

# --- static ------------------------------------------------------------------

# Scripts by their first lines (a shebang, or lib.sh's shell directive).
shell_scripts() {
  local f
  while IFS= read -r f; do
    if head -n 3 "$f" | grep -Eq '^#!.*\b(ba)?sh\b|shellcheck shell='; then
      echo "$f"
    fi
  done < <(find deploy scripts bench -type f | sort)
}
lint_shell() {
  local scripts
  mapfile -t scripts < <(shell_scripts)
  shellcheck -x --source-path=SCRIPTDIR "${scripts[@]}" && echo "clean: ${scripts[*]}"
}
check "shellcheck: every shell script of deploy/, scripts/ and bench/" lint_shell

hadolint_clean() { "$VENV/bin/hadolint" deploy/container/Dockerfile && echo clean; }
check "hadolint: deploy/container/Dockerfile" hadolint_clean
check "the image's build context holds the workspace and nothing else" \
  "$PY" deploy/container/check_context.py

# Informational rules too (hard-coded partitions, retention policies, ...).
cfn_lint_clean() { "$VENV/bin/cfn-lint" --include-checks I -- deploy/aws/*.yaml && echo clean: deploy/aws/*.yaml; }
check "cfn-lint: deploy/aws/*.yaml" cfn_lint_clean
check "policy-vs-code check catches drift (self-test)" "$PY" deploy/aws/check_policy.py --self-test
check "IAM policy grants exactly what the server's AWS calls need" "$PY" deploy/aws/check_policy.py

# Rendered with kustomize, validated against the API schemas of the oldest
# and newest Kubernetes supported (strict: unknown fields are errors), then
# checked for what the schemas cannot see, the pre-warm CronJob's command
# line by the CLI itself (check_rendered.py --cli).
render_and_validate() {
  local dir=$1 out
  out="$WORK/$(echo "$dir" | tr / _).yaml"
  "$KUBECTL" kustomize "$dir" >"$out" || return 1
  for version in 1.30.0 1.37.0; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$out" || return 1
    echo "$dir: valid against Kubernetes $version"
  done
  "$PY" deploy/kubernetes/check_rendered.py "$out" --cli "$CLI"
}
# prometheus-operator adds a ServiceMonitor: kubernetes-validate has no
# schema for that CRD (it says so and passes it); check_rendered.py checks
# its structure and that it fits the Service and the alert rules.
# prewarm-key-list mounts a key list from a ConfigMap into the pre-warm.
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/example \
  deploy/kubernetes/overlays/prometheus-operator deploy/kubernetes/overlays/prewarm-key-list; do
  check "kustomize + kubernetes-validate + consistency: $dir" render_and_validate "$dir"
done

# scratch_overlay NAME COMPONENTS LITERALS: prints the directory of an
# overlay made in $WORK on top of overlays/example, with those components
# (names under kubernetes/components/) and those literals merged into the
# expresscache-prewarm ConfigMap (both space-separated, may be empty).
scratch_overlay() {
  local dir=$WORK/overlays/$1 rel c
  mkdir -p "$dir"
  rel=$(realpath --relative-to="$dir" deploy/kubernetes)
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
    printf 'resources:\n  - %s/overlays/example\n' "$rel"
    if [ -n "$2" ]; then
      echo "components:"
      for c in $2; do echo "  - $rel/components/$c"; done
    fi
    if [ -n "$3" ]; then
      printf 'configMapGenerator:\n  - name: expresscache-prewarm\n    behavior: merge\n    literals:\n'
      for c in $3; do echo "      - $c"; done
    fi
  } >"$dir/kustomization.yaml"
  echo "$dir"
}
# The components that add the pre-warm's yes/no flags, on the example.
prewarm_flags() {
  local dir
  dir=$(scratch_overlay prewarm-flags "prewarm-force-copy prewarm-allow-empty" "") || return 1
  render_and_validate "$dir" || return 1
  grep -E -- '^ +- --(force-copy|allow-empty)$' "$WORK/$(echo "$dir" | tr / _).yaml"
  [ "$(grep -cE -- '^ +- --(force-copy|allow-empty)$' "$WORK/$(echo "$dir" | tr / _).yaml")" = 2 ]
}
check "kustomize + kubernetes-validate + consistency: example + components prewarm-force-copy, prewarm-allow-empty" \
  prewarm_flags
# refused_overlay NAME COMPONENTS LITERALS TEXT: check_rendered.py must
# fail that overlay, saying TEXT.
refused_overlay() {
  local dir out
  dir=$(scratch_overlay "$1" "$2" "$3") || return 1
  out="$WORK/refused-$1.yaml"
  "$KUBECTL" kustomize "$dir" >"$out" || return 1
  if "$PY" deploy/kubernetes/check_rendered.py "$out" --cli "$CLI" >"$WORK/refused.out" 2>&1; then
    cat "$WORK/refused.out"
    echo "$1: passed, should have been refused ($4)"
    return 1
  fi
  sed "s|^$WORK/||" "$WORK/refused.out"
  grep -qF -- "$4" "$WORK/refused.out" || { echo "$1: the refusal does not say: $4"; return 1; }
  echo "$1: refused, as it should"
}
prewarm_refusals() {
  refused_overlay force-copy-with-staleness prewarm-force-copy MAX_STALENESS=30m \
    "cannot be combined with force_copy" &&
    refused_overlay destination-prefix-without-slash "" DESTINATION_PREFIX=team-a \
      "must end in '/'" &&
    refused_overlay bad-max-staleness "" MAX_STALENESS=soon \
      "invalid value 'soon' for '--max-staleness" &&
    refused_overlay key-list-without-its-configmap prewarm-key-list "" \
      "mounts ConfigMap expresscache-prewarm-keys, which is not rendered"
}
check "check_rendered.py refuses pre-warm settings the CLI would refuse (self-test)" prewarm_refusals

# Prometheus: the alert rules' syntax and their unit tests (synthetic
# series: which alerts fire, which do not), then every metric the rules
# and the Grafana dashboard use against the server's code.
rules_valid() { promtool check rules deploy/prometheus/alerts.yml; }
check "promtool check rules: deploy/prometheus/alerts.yml" rules_valid
rules_tested() { promtool test rules deploy/prometheus/alerts_test.yml; }
check "promtool test rules: deploy/prometheus/alerts_test.yml" rules_tested
check "metrics-vs-code check catches drift (self-test)" "$PY" deploy/prometheus/check_metrics.py --self-test
check "alert rules and dashboard use only metrics the server exports, as typed" \
  "$PY" deploy/prometheus/check_metrics.py

# systemd-analyze verify in a scratch root: the units' ExecStart binaries
# exist there as placeholders, the system's own units are linked in. Any
# warning (an unknown key, say) fails the check too.
verify_units() {
  local root=$WORK/sdroot bin
  mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
  ln -s /lib/systemd/system "$root/usr/lib/systemd/system"
  for bin in expresscache-server expresscache expresscache-warm; do
    printf '#!/bin/sh\n' >"$root/usr/local/bin/$bin"
    chmod +x "$root/usr/local/bin/$bin"
  done
  cp deploy/systemd/*.service deploy/systemd/*.timer "$root/etc/systemd/system/" || return 1
  if ! systemd-analyze verify --root="$root" expresscache-server.service \
    expresscache-prewarm@weekly.service expresscache-prewarm@weekly.timer >"$WORK/verify.out" 2>&1 ||
    [ -s "$WORK/verify.out" ]; then
    cat "$WORK/verify.out"
    return 1
  fi
  echo "verified: expresscache-server.service expresscache-prewarm@weekly.service expresscache-prewarm@weekly.timer"
  systemd-analyze calendar --iterations=2 "$(sed -n 's/^OnCalendar=//p' deploy/systemd/expresscache-prewarm@.timer)"
}
check "systemd-analyze verify: deploy/systemd units" verify_units

# The pre-warm's env file example names only variables the wrapper (or the
# CLI it runs) reads, and every setting of the wrapper but the two a timer
# must not set: EXPRESSCACHE_CLI (the unit sets it) and
# EXPRESSCACHE_REQUEST_ID (a fixed id would reattach every run to the
# first run's warm).
prewarm_env_complete() {
  local example=deploy/systemd/prewarm.env.example named wrapper cli v ok=0
  named=$(grep -oE '^(# ?)?EXPRESSCACHE_[A-Z_]+=' "$example" | grep -oE 'EXPRESSCACHE_[A-Z_]+' | sort -u)
  wrapper=$(grep -oE 'EXPRESSCACHE_[A-Z_]+' deploy/hpc/expresscache-warm | sort -u)
  cli=$("$CLI" warm --help | grep -oE '\[env: EXPRESSCACHE_[A-Z_]+' | grep -oE 'EXPRESSCACHE_[A-Z_]+' | sort -u)
  for v in $named; do
    if ! grep -qx "$v" <<<"$wrapper"$'\n'"$cli"; then
      echo "$example: $v is read by neither deploy/hpc/expresscache-warm nor the CLI"
      ok=1
    fi
  done
  for v in $wrapper; do
    case $v in EXPRESSCACHE_CLI | EXPRESSCACHE_REQUEST_ID) continue ;; esac
    if ! grep -qx "$v" <<<"$named"; then
      echo "$example: the wrapper's $v is not in it"
      ok=1
    fi
  done
  grep -q '^Environment=EXPRESSCACHE_CLI=' deploy/systemd/expresscache-prewarm@.service ||
    { echo "expresscache-prewarm@.service does not set EXPRESSCACHE_CLI"; ok=1; }
  [ "$ok" = 0 ] && echo "$example names: $(tr '\n' ' ' <<<"$named")"
}
check "systemd: prewarm.env.example names every setting of the wrapper, and only those" prewarm_env_complete

# --- live: moto, a slowing proxy and a real server ------------------------------

export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
MOTO_PORT=$(free_port)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
wait_port "$MOTO_PORT"
MOTO=http://127.0.0.1:$MOTO_PORT

check "CloudFormation tables are the tables \`index create\` makes (on moto)" \
  "$PY" deploy/aws/check_tables.py --endpoint "$MOTO" --server "$SERVER"

check "the service stack deploys on moto's CloudFormation and resolves to the parameters" \
  "$PY" deploy/aws/check_stack.py --endpoint "$MOTO"

SRC=deploy-test-source
CLASH=deploy-test-clash
DIR=deploy-test--use1-az4--x-s3
"$PY" deploy/testing/fixtures.py --endpoint "$MOTO" --source "$SRC" --clash "$CLASH" --directory-bucket "$DIR"
check "backstop lifecycle rules apply to a directory bucket, expiry beyond --max-ttl" \
  "$PY" deploy/testing/fixtures.py --endpoint "$MOTO" --directory-bucket "$DIR" \
  --lifecycle deploy/aws/backstop-lifecycle.json
PROXY_PORT=$(free_port)
"$PY" deploy/testing/slow_proxy.py --listen "$PROXY_PORT" --upstream "$MOTO_PORT" --delay 0.5 &
PIDS+=($!)
wait_port "$PROXY_PORT"

# S3 through the proxy: copies under slow/ take 0.5 s, 2 at a time, so a
# warm of its 60 objects runs for 15 s. The drain grace (6 s) leaves the
# probes below time to see it, and ends before that warm does: the stop
# interrupts it, and the restart in the teardown resumes it.
PORT=$(free_port)
METRICS_PORT=$(free_port)
NO_COLOR=1 AWS_ENDPOINT_URL_S3=http://127.0.0.1:$PROXY_PORT "$SERVER" --listen "127.0.0.1:$PORT" \
  --metrics-listen "127.0.0.1:$METRICS_PORT" \
  --index "sqlite://$WORK/index.db" --max-concurrency 2 --shutdown-grace 6s \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
wait_port "$PORT"
wait_port "$METRICS_PORT"
export EXPRESSCACHE_ENDPOINT=http://127.0.0.1:$PORT

# probe EXPECTED_STATUS FLAGS...: grpc_health_probe's flags and exit codes.
probe() {
  local expect=$1 status=0
  shift
  "$PY" deploy/container/health_probe.py "$@" || status=$?
  echo "health probe $* -> exit $status"
  [ "$status" = "$expect" ]
}
# Every gRPC probe of the rendered Deployment, against the server.
k8s_probes() {
  local ready=$1 kind port service expect probes
  probes=$("$PY" deploy/kubernetes/check_rendered.py --probes "$WORK/deploy_kubernetes_overlays_example.yaml") ||
    return 1
  [ "$(wc -l <<<"$probes")" = 3 ] || { echo "expected 3 probes, got: $probes"; return 1; }
  while read -r kind port service; do
    expect=0
    [ "$kind" = readinessProbe ] && expect=$ready
    echo "$kind (port $port in the pod) service '${service}'"
    probe "$expect" "-addr=127.0.0.1:$PORT" "-service=$service" || return 1
  done <<<"$probes"
}
check "the image's HEALTHCHECK command passes on a serving server" \
  probe 0 --dockerfile deploy/container/Dockerfile "$PORT"
check "Kubernetes startup/liveness/readiness probes pass on a serving server" k8s_probes 0

# --- the Slurm/systemd warm wrapper ------------------------------------------

# A stand-in for squeue that answers only the query the wrapper makes (the
# job's comment) and fails on any other.
mkdir -p "$WORK/bin"
cat >"$WORK/bin/squeue" <<'SH'
#!/bin/sh
[ "$*" = "--noheader --jobs $SLURM_JOB_ID --format %k" ] || { echo "squeue: unexpected call: $*" >&2; exit 1; }
cat "$SQUEUE_COMMENT"
SH
chmod +x "$WORK/bin/squeue"
WRAPPER_ENV=(PATH="$WORK/bin:$PATH" EXPRESSCACHE_CLI="$CLI" EXPRESSCACHE_LOG_INTERVAL=1s
  SQUEUE_COMMENT="$WORK/comment")

# warm EXPECTED_STATUS TEXT VAR=value...: runs the wrapper with the
# variables; its exit status must be EXPECTED_STATUS and its output hold TEXT.
warm() {
  local expect=$1 text=$2 status=0
  shift 2
  env "${WRAPPER_ENV[@]}" "$@" deploy/hpc/expresscache-warm >"$WORK/warm.out" 2>&1 || status=$?
  cat "$WORK/warm.out"
  echo "-> exit status $status"
  if [ "$status" != "$expect" ]; then
    echo "expected exit status $expect"
    return 1
  fi
  grep -qF -- "$text" "$WORK/warm.out" || { echo "output lacks: $text"; return 1; }
}
DECL=(EXPRESSCACHE_SOURCE_BUCKET="$SRC" EXPRESSCACHE_DIRECTORY_BUCKET="$DIR")

check "wrapper: env declaration warms two prefixes, exit 0" \
  warm 0 "SUCCEEDED: 80 listed, 0 hits, 80 copied" "${DECL[@]}" \
  EXPRESSCACHE_PREFIXES=datasets/2026-11-23/,datasets/2026-11-24/ EXPRESSCACHE_TTL=2h

# The same job run twice (a requeue) attaches to the same warm by its
# request id: the same operation id both times.
comment_job_twice() {
  echo "other notes; expresscache: bucket=$SRC prefixes=datasets/2026-11-23/ directory-bucket=$DIR ttl=2h" \
    >"$WORK/comment"
  warm 0 "data ready" SLURM_JOB_ID=4242 SLURM_CLUSTER_NAME=test || return 1
  local first second
  first=$(grep -o '^warm [0-9a-f-]* SUCCEEDED' "$WORK/warm.out")
  warm 0 "40 hits" SLURM_JOB_ID=4242 SLURM_CLUSTER_NAME=test || return 1
  second=$(grep -o '^warm [0-9a-f-]* SUCCEEDED' "$WORK/warm.out")
  echo "first: $first; second: $second"
  [ -n "$first" ] && [ "$first" = "$second" ]
}
check "wrapper: #SBATCH --comment declaration, a requeued job reattaches, exit 0" comment_job_twice

check "wrapper: date-expanded prefix (systemd timer's pre-warm), exit 0" \
  warm 0 "datasets/2026-11-24/} into" "${DECL[@]}" \
  EXPRESSCACHE_PREFIXES='datasets/%Y-%m-%d/' EXPRESSCACHE_PREFIX_DATE=2026-11-24
check "wrapper: missing source bucket fails the job, exit 6" \
  warm 6 "a bucket does not exist or access was denied" \
  EXPRESSCACHE_SOURCE_BUCKET=no-such-bucket EXPRESSCACHE_DIRECTORY_BUCKET="$DIR" \
  EXPRESSCACHE_PREFIXES=datasets/
check "wrapper: keys cached from another source (KeyClash) are a partial failure, exit 3" \
  warm 3 "PARTIALLY FAILED: the keys listed above could not be copied" \
  EXPRESSCACHE_SOURCE_BUCKET="$CLASH" EXPRESSCACHE_DIRECTORY_BUCKET="$DIR" \
  EXPRESSCACHE_PREFIXES=datasets/2026-11-23/
check "wrapper: invalid prefix is refused, exit 2" \
  warm 2 "was refused as invalid" "${DECL[@]}" EXPRESSCACHE_PREFIXES=no-trailing-slash
check "wrapper: nothing declared, exit 2" \
  warm 2 "no source bucket declared" SLURM_JOB_ID=
bad_comment() {
  echo "expresscache: bucket=$SRC prefixes=datasets/ directory-bucket=$DIR colour=blue" >"$WORK/comment"
  warm 2 "unknown word 'colour=blue'" SLURM_JOB_ID=4343
}
check "wrapper: unknown word in the comment, exit 2" bad_comment
check "wrapper: server unreachable, exit 5" \
  warm 5 "server unreachable" "${DECL[@]}" EXPRESSCACHE_PREFIXES=datasets/ \
  EXPRESSCACHE_ENDPOINT="http://127.0.0.1:$(free_port)" EXPRESSCACHE_RECONNECT_ATTEMPTS=1

# --- the wrapper's optional settings, each seen reaching the warm ---------

# dir_keys PREFIX: the keys the directory bucket holds under PREFIX, as S3
# lists them (not as the index says).
dir_keys() {
  "$PY" deploy/testing/fixtures.py --endpoint "$MOTO" --directory-bucket "$DIR" --keys "$1"
}
# The operation id of the warm the last wrapper run waited for.
last_operation() { grep -o '^warm [0-9a-f-]* [A-Z_]*:' "$WORK/warm.out" | cut -d' ' -f2; }

allow_empty() {
  warm 1 "FAILED (see the reason above)" "${DECL[@]}" EXPRESSCACHE_PREFIXES=empty/ || return 1
  grep -F -- "--allow-empty" "$WORK/warm.out" || { echo "the failure does not point at --allow-empty"; return 1; }
  warm 0 "SUCCEEDED: 0 listed, 0 hits, 0 copied" "${DECL[@]}" EXPRESSCACHE_PREFIXES=empty/ \
    EXPRESSCACHE_ALLOW_EMPTY=true
}
check "wrapper: EXPRESSCACHE_ALLOW_EMPTY=true lets an empty prefix succeed (exit 1 without it), exit 0" allow_empty

# Three of keyed/'s ten objects, as a key, an s3:// URL, with a comment
# and a blank line: exactly those three are copied.
printf '# three of the ten objects under keyed/\nkeyed/part-001.bin\n\nkeyed/part-004.bin\ns3://%s/keyed/part-007.bin\n' \
  "$SRC" >"$WORK/keys.txt"
key_list() {
  warm 0 "SUCCEEDED: 3 listed, 0 hits, 3 copied" "${DECL[@]}" EXPRESSCACHE_FILES_FROM="$WORK/keys.txt" ||
    return 1
  local keys
  keys=$(dir_keys keyed/) || return 1
  echo "$DIR holds under keyed/: $(tr '\n' ' ' <<<"$keys")"
  [ "$keys" = $'keyed/part-001.bin\nkeyed/part-004.bin\nkeyed/part-007.bin' ]
}
check "wrapper: EXPRESSCACHE_FILES_FROM warms exactly the listed keys, exit 0" key_list

destination_prefix() {
  warm 0 "SUCCEEDED: 40 listed, 0 hits, 40 copied" "${DECL[@]}" \
    EXPRESSCACHE_PREFIXES=datasets/2026-11-23/ EXPRESSCACHE_DESTINATION_PREFIX=team-a/ || return 1
  local keys
  keys=$(dir_keys team-a/) || return 1
  echo "$DIR holds $(wc -l <<<"$keys") keys under team-a/, first $(head -n 1 <<<"$keys"), last $(tail -n 1 <<<"$keys")"
  [ "$(grep -c '^team-a/datasets/2026-11-23/part-[0-9]*\.bin$' <<<"$keys")" = 40 ] &&
    [ "$(wc -l <<<"$keys")" = 40 ]
}
check "wrapper: EXPRESSCACHE_DESTINATION_PREFIX caches the keys under it, exit 0" destination_prefix

# The comment job above warmed datasets/2026-11-23/: within the window the
# server answers from that warm without listing.
max_staleness() {
  warm 0 "SUCCEEDED: 40 listed, 40 hits, 0 copied" "${DECL[@]}" \
    EXPRESSCACHE_PREFIXES=datasets/2026-11-23/ EXPRESSCACHE_MAX_STALENESS=1h || return 1
  local op fresh
  op=$(last_operation)
  fresh=$("$CLI" status --operation "$op" --output json |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["progress"]["fresh_from_operation_id"])') || return 1
  echo "operation $op answered from the earlier warm ${fresh:-(none: it listed)}"
  [ -n "$fresh" ]
}
check "wrapper: EXPRESSCACHE_MAX_STALENESS answers from a recent warm without listing, exit 0" max_staleness

# datasets/2026-11-24/ is cached since the first check: all copied again.
check "wrapper: EXPRESSCACHE_FORCE_COPY=true copies cached objects again, exit 0" \
  warm 0 "SUCCEEDED: 40 listed, 0 hits, 40 copied" "${DECL[@]}" \
  EXPRESSCACHE_PREFIXES=datasets/2026-11-24/ EXPRESSCACHE_FORCE_COPY=true

# The same settings as words of the job's comment.
comment_settings() {
  echo "expresscache: bucket=$SRC files-from=$WORK/keys.txt directory-bucket=$DIR destination-prefix=team-b/ force-copy=true" \
    >"$WORK/comment"
  warm 0 "SUCCEEDED: 3 listed, 0 hits, 3 copied" SLURM_JOB_ID=6061 || return 1
  local keys
  keys=$(dir_keys team-b/) || return 1
  echo "$DIR holds under team-b/: $(tr '\n' ' ' <<<"$keys")"
  [ "$keys" = $'team-b/keyed/part-001.bin\nteam-b/keyed/part-004.bin\nteam-b/keyed/part-007.bin' ] || return 1
  echo "expresscache: bucket=$SRC prefixes=empty/ directory-bucket=$DIR allow-empty=yes max-staleness=10m" \
    >"$WORK/comment"
  warm 0 "data ready" SLURM_JOB_ID=6062 || return 1
  grep -F "(max staleness 10m; empty allowed;" "$WORK/warm.out"
}
check "wrapper: files-from=, destination-prefix=, force-copy=, allow-empty=, max-staleness= in the comment, exit 0" \
  comment_settings

# refused TEXT VAR=value...: the wrapper refuses the declaration itself
# (exit 2, saying TEXT), before any warm is asked for.
refused() {
  local text=$1
  shift
  warm 2 "$text" "$@" || return 1
  if grep -q "^expresscache-warm: .*warm of " "$WORK/warm.out"; then
    echo "the wrapper ran the CLI instead of refusing the declaration"
    return 1
  fi
}
bad_staleness() {
  refused "max staleness 'soon' is not a duration such as 30s, 10m, 1h30m or 7d (EXPRESSCACHE_MAX_STALENESS" \
    "${DECL[@]}" EXPRESSCACHE_PREFIXES=datasets/ EXPRESSCACHE_MAX_STALENESS=soon || return 1
  echo "expresscache: bucket=$SRC prefixes=datasets/ directory-bucket=$DIR max-staleness=1x" >"$WORK/comment"
  refused "max-staleness= in the comment" SLURM_JOB_ID=6063
}
check "wrapper: a bad max staleness (variable or comment) exits 2, naming it" bad_staleness
bad_settings() {
  refused "destination prefix 'team-a' must end in \"/\"" "${DECL[@]}" EXPRESSCACHE_PREFIXES=datasets/ \
    EXPRESSCACHE_DESTINATION_PREFIX=team-a &&
    refused "'maybe' is neither true nor false (EXPRESSCACHE_FORCE_COPY" "${DECL[@]}" \
      EXPRESSCACHE_PREFIXES=datasets/ EXPRESSCACHE_FORCE_COPY=maybe &&
    refused "'sometimes' is neither true nor false (EXPRESSCACHE_ALLOW_EMPTY" "${DECL[@]}" \
      EXPRESSCACHE_PREFIXES=datasets/ EXPRESSCACHE_ALLOW_EMPTY=sometimes &&
    refused "is not a readable file (EXPRESSCACHE_FILES_FROM" "${DECL[@]}" \
      EXPRESSCACHE_FILES_FROM="$WORK/no-such-list.txt" &&
    refused "a warm takes one or the other" "${DECL[@]}" EXPRESSCACHE_PREFIXES=datasets/ \
      EXPRESSCACHE_FILES_FROM="$WORK/keys.txt" &&
    refused "contradict each other" "${DECL[@]}" EXPRESSCACHE_PREFIXES=datasets/ \
      EXPRESSCACHE_FORCE_COPY=true EXPRESSCACHE_MAX_STALENESS=10m
}
check "wrapper: bad destination prefix, yes/no values, key list, conflicting settings exit 2, naming them" \
  bad_settings

# A warm cancelled while the job waits for it: the wrapper runs in the
# background on slow/, the test cancels the running operation.
cancelled() {
  env "${WRAPPER_ENV[@]}" "${DECL[@]}" EXPRESSCACHE_PREFIXES=slow/ SLURM_JOB_ID=5150 \
    deploy/hpc/expresscache-warm >"$WORK/cancel.out" 2>&1 &
  local pid=$! op="" i status=0
  for i in $(seq 100); do
    op=$("$CLI" ops --state running --output json | "$PY" -c \
      'import json,sys; ops=[json.loads(l) for l in sys.stdin if l.strip()]; print(ops[0]["operation_id"] if ops else "")')
    [ -n "$op" ] && break
    sleep 0.1
  done
  echo "running operation after ${i} polls: ${op:-none}"
  [ -n "$op" ] && "$CLI" cancel "$op"
  wait "$pid" || status=$?
  cat "$WORK/cancel.out"
  echo "-> exit status $status"
  [ "$status" = 4 ] && grep -qF "was CANCELLED" "$WORK/cancel.out"
}
check "wrapper: warm cancelled while the job waits, exit 4" cancelled

# The runbook's online backup of the SQLite index, taken while the server
# runs: a consistent copy the server can open (restore drill below).
backup_index() {
  sqlite3 "$WORK/index.db" ".backup '$WORK/backup.db'" || return 1
  local integrity records
  integrity=$(sqlite3 "$WORK/backup.db" "PRAGMA integrity_check")
  records=$(sqlite3 "$WORK/backup.db" "SELECT count(*) FROM records")
  echo "backup: integrity $integrity, $records records"
  [ "$integrity" = ok ] && [ "$records" -ge 80 ]
}
check "SQLite index: online backup while the server runs" backup_index

# The server's /metrics after the warms above (succeeded, partially failed,
# failed, cancelled; copies and hits): Prometheus' naming lint, then every
# metric the alert rules and the dashboard use is there with the labels
# they select on, but for those only emitted on an event these warms do
# not cause (check_metrics.py ON_EVENT: retries, throttling, ...).
scrape_metrics() {
  "$PY" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
    "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt" || return 1
  echo "scraped $(grep -c '^expresscache_' "$WORK/metrics.txt") samples of" \
    "$(grep -c '^# TYPE expresscache_' "$WORK/metrics.txt") metrics"
  grep -E '^expresscache_(warms_finished_total|objects_(copied|hit|failed)_total)' "$WORK/metrics.txt"
  promtool check metrics <"$WORK/metrics.txt" || return 1
  echo "promtool check metrics: no lint problem"
  "$PY" deploy/prometheus/check_metrics.py --scrape "$WORK/metrics.txt"
}
check "metrics: a real scrape passes promtool's lint and has what the rules and dashboard use" scrape_metrics

check "wrapper: EXPRESSCACHE_WARM_TIMEOUT runs out, exit 124, the warm goes on" \
  warm 124 "did not finish within 1s" "${DECL[@]}" EXPRESSCACHE_PREFIXES=slow/ \
  EXPRESSCACHE_WARM_TIMEOUT=1s

# --- drain: SIGTERM while that warm still runs --------------------------------

RSS=$(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$SERVER_PID/status")
draining() {
  # JSON: one line per running operation, nothing when none runs.
  "$CLI" ops --state running --output json | tee "$WORK/running.out"
  grep -q . "$WORK/running.out" || { echo "no warm running to drain"; return 1; }
  kill -TERM "$SERVER_PID" || return 1
  sleep 0.5
  # Out of the Service, still alive: no restart in the middle of the drain.
  k8s_probes 4 || return 1
  probe 4 --dockerfile deploy/container/Dockerfile "$PORT" || return 1
  local status=0
  wait "$SERVER_PID" || status=$?
  echo "server exited with status $status after its 6 s grace"
  tail -n 3 "$WORK/server.log"
  [ "$status" = 0 ]
}
check "SIGTERM: readiness and HEALTHCHECK turn NOT_SERVING, liveness stays SERVING, clean exit" draining

# --- restore and teardown -------------------------------------------------------

# start_server INDEX_FILE: a server straight on moto; sets SERVER_PID, PORT.
start_server() {
  PORT=$(free_port)
  NO_COLOR=1 AWS_ENDPOINT_URL_S3=$MOTO "$SERVER" --listen "127.0.0.1:$PORT" --index "sqlite://$1" \
    >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_port "$PORT"
  export EXPRESSCACHE_ENDPOINT=http://127.0.0.1:$PORT
}
stop_server() {
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID"
}

restore_drill() {
  cp "$WORK/backup.db" "$WORK/restored.db" || return 1
  start_server "$WORK/restored.db" || return 1
  "$CLI" status --directory-bucket "$DIR" --prefix datasets/ | tee "$WORK/status.out"
  stop_server
  grep -qF '"datasets/": 80 objects' "$WORK/status.out"
}
check "SQLite index: a server runs on the restored backup and knows its cache" restore_drill

# The runbook's teardown: the restarted server first finishes the warm the
# drain interrupted, then evict --force of the whole bucket leaves nothing.
teardown() {
  start_server "$WORK/index.db" || return 1
  local i
  for i in $(seq 100); do
    [ -z "$("$CLI" ops --state running --output json)" ] && break
    sleep 0.2
  done
  "$CLI" ops --limit 1 | tee "$WORK/ops.out"
  grep -q 'SUCCEEDED.*(resumed 1x)' "$WORK/ops.out" || { echo "the interrupted warm was not resumed"; return 1; }
  "$CLI" evict --directory-bucket "$DIR" --prefix "" --force || return 1
  "$CLI" status --directory-bucket "$DIR" --prefix "" | tee "$WORK/status.out"
  stop_server
  local left
  left=$("$PY" deploy/testing/fixtures.py --endpoint "$MOTO" --directory-bucket "$DIR" --count)
  echo "objects left in $DIR: $left"
  grep -qF '"": 0 objects' "$WORK/status.out" && [ "$left" = 0 ]
}
check "teardown: resumed warm finishes, evict --force empties the directory bucket" teardown

echo
log "server peak RSS (VmHWM) after the warms above: $RSS"
log "deploy/test.sh took $((SECONDS - STARTED)) s after the tool installs"
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf 'FAILED: %s\n' "${FAILED[@]}" >&2
fi
echo "deploy: $PASSED passed, ${#FAILED[@]} failed"
[ "${#FAILED[@]}" -eq 0 ]
