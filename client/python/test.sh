#!/usr/bin/env bash
# Tests the Python SDK against the real server: installs it the way a user
# would (`pip install ./client/python`, which generates the gRPC stubs from
# proto/), type-checks it, then runs pytest, which starts moto and
# expresscache-server on free ports and also runs the README's example.
#
#   client/python/test.sh            everything
#   client/python/test.sh -k async   extra arguments go to pytest
#
# The server binary comes from $EXPRESSCACHE_BIN_DIR (default target/debug):
# build it first (scripts/test does). The tests fail, never skip, without it.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"

# Its own venv, not the moto venv ($VENV): that one is pinned to
# deploy/local/requirements.txt and shared with the quick start and the Rust
# tests, and installing the SDK (grpcio, protobuf) and the test tools into
# it would tie their versions to moto's and mutate a venv its stamp says is
# done. Here the package is installed into a venv that holds only it, its
# dependencies and the tools, which is what proves the packaging.
PY_VENV="${EXPRESSCACHE_PYTHON_VENV:-$REPO_ROOT/.venv-python}"
SDK="$REPO_ROOT/client/python"

ensure_venv # moto, which the tests start
ensure_apt openssl openssl # makes the TLS tests' certificates
export EXPRESSCACHE_MOTO_SERVER="${EXPRESSCACHE_MOTO_SERVER:-$VENV/bin/moto_server}"

stamp="$PY_VENV/.requirements-test"
if [ ! -x "$PY_VENV/bin/python" ] || ! cmp -s "$SDK/requirements-test.txt" "$stamp"; then
  log "creating the Python SDK's test venv in $PY_VENV"
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/pip" install -q --disable-pip-version-check -r "$SDK/requirements-test.txt"
  cp "$SDK/requirements-test.txt" "$stamp"
fi

log "pip install ./client/python"
# setuptools builds in the source tree: a stale build/ could carry files
# that no longer exist into the wheel.
rm -rf "$SDK/build" "$SDK"/src/*.egg-info
"$PY_VENV/bin/pip" uninstall -q -y expresscache >/dev/null 2>&1 || true
(cd "$REPO_ROOT" && "$PY_VENV/bin/pip" install -q --disable-pip-version-check ./client/python)
rm -rf "$SDK/build" "$SDK"/src/*.egg-info

cd "$SDK"
log "mypy --strict: the installed package, the tests, the example"
"$PY_VENV/bin/mypy" -p expresscache
"$PY_VENV/bin/mypy" tests examples

log "pytest"
"$PY_VENV/bin/python" -m pytest "$@"
