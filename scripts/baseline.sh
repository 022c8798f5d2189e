#!/usr/bin/env bash
# Build the agent as it was at git revision $1 into target directory $2,
# for a benchmark's baseline (make bench-capture-cost). Idempotent: an
# existing build of that revision is reused.
set -euo pipefail
rev=$(git rev-parse --short "$1")
out=$2
bin="$out/$rev/release/pgbackups"
if [ ! -x "$bin" ]; then
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    git archive "$rev" | tar -x -C "$src"
    CARGO_TARGET_DIR="$out/$rev" cargo build --release -p pgbackups --manifest-path "$src/Cargo.toml" >&2
fi
echo "$bin"
