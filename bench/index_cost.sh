#!/usr/bin/env bash
# What the DynamoDB index costs per object, cold and re-warm, in requests,
# units and dollars (server/examples/index_cost.rs says how they are
# counted). Needs no AWS account: DynamoDB is moto's.
#
#   bench/index_cost.sh [--objects N]     (default 20,000)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
ensure_rust
ensure_venv
export EXPRESSCACHE_MOTO_SERVER="$VENV/bin/moto_server"
cargo run --locked -p expresscache-server --features testing \
  --example index_cost -- "$@"
