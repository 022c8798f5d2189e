#!/usr/bin/env bash
# Install what pg_backups needs to build and test, only what is missing, so
# that running it again does nothing. Debian 12; as root, or with sudo.
set -euo pipefail

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# System packages: PostgreSQL 15 (server with contrib, headers, client), bindgen's clang,
# sudo for `cargo pgrx test --runas`, pgcopydb for the benchmark.
packages=(postgresql-15 postgresql-server-dev-15 postgresql-client-15
          libclang-dev clang sudo pkg-config pgcopydb curl zstd)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# Debian starts a default cluster on port 5432; nothing here uses it.

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    echo "deps: installing cargo-pgrx $PGRX_VERSION (a few minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# A real S3-compatible server for the end-to-end tests.
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    echo "deps: installing s3s-fs 0.14.1 (S3-compatible test server)"
    cargo install s3s-fs --version 0.14.1 --locked --features binary
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if ! grep -qs "^pg15 *= *\"$PG_CONFIG\"" "$PGRX_HOME/config.toml"; then
    echo "deps: cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
fi
