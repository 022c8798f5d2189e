#!/usr/bin/env bash
# Install what pg_backups needs to build and test, only what is missing, so
# that running it again does nothing. Debian 12; as root, or with sudo.
set -euo pipefail

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# PostgreSQL 16 (server, headers, client tools) from PyPI's pgserver wheel,
# unpacked here (the Makefile passes its PG16_WHEEL; the e2e tests default
# to the same path, tests/src/cluster.rs).
PG16_WHEEL="${PG16_WHEEL:-/opt/pgbackups/pg16-wheel}"
PG16_HOME=$PG16_WHEEL/pgserver/pginstall
PG16_PGSERVER_VERSION=0.1.4
PGRX_VERSION=0.18.1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# System packages: PostgreSQL 15 (server with contrib, headers, client), bindgen's clang,
# sudo for `cargo pgrx test --runas`, pgcopydb for the benchmark, age (age-keygen: the
# benchmark's key; `age -d` is how a person decrypts a backup by hand).
# pip (Debian's) to unpack the PostgreSQL 16 wheel. chromium (headless) renders the
# agent's status page in tests/tests/status_page.rs and takes docs/status-page.png.
packages=(postgresql-15 postgresql-server-dev-15 postgresql-client-15
          libclang-dev clang sudo pkg-config pgcopydb curl zstd age python3-pip chromium)
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

# PostgreSQL 16: pgserver's manylinux wheel ships 16.2's binaries, headers
# and share files under pgserver/pginstall/, relocatable (pg_config answers
# with paths next to itself). Installed for CPython 3.11 whatever python3
# runs pip, without its Python dependencies: only the files are used.
if ! "$PG16_HOME/bin/pg_config" --version 2>/dev/null | grep -q "PostgreSQL 16"; then
    echo "deps: installing PostgreSQL 16 from pgserver $PG16_PGSERVER_VERSION into $PG16_WHEEL"
    $SUDO mkdir -p "$(dirname "$PG16_WHEEL")"
    $SUDO python3 -m pip install -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
        --platform manylinux2014_x86_64 --upgrade --target "$PG16_WHEEL" "pgserver==$PG16_PGSERVER_VERSION"
fi
# initdb and postgres run as the postgres user, and read the extension files
# `make install` puts into share/ and lib/.
if [ -n "$(find "$PG16_WHEEL" ! -perm -o+r -print -quit)" ] \
        || [ -n "$(find "$PG16_WHEEL" -type d ! -perm -o+x -print -quit)" ]; then
    $SUDO chmod -R a+rX "$PG16_WHEEL"
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if ! grep -qs "^pg15 *= *\"$PG_CONFIG\"" "$PGRX_HOME/config.toml" \
        || ! grep -qs "^pg16 *= *\"$PG16_HOME/bin/pg_config\"" "$PGRX_HOME/config.toml"; then
    echo "deps: cargo pgrx init --pg15 $PG_CONFIG --pg16 $PG16_HOME/bin/pg_config"
    cargo pgrx init --pg15 "$PG_CONFIG" --pg16 "$PG16_HOME/bin/pg_config"
fi
