#!/usr/bin/env bash
# Type-check the extension (and its in-database tests) for the PostgreSQL
# majors this machine has no headers for: 13, 14 and 17 (15 and 16 are built
# and tested for real). pgrx-pg-sys ships pre-generated bindings for every
# major it supports, used when it is compiled with `--cfg docsrs` and its
# build script sees DOCS_RS=1; a rustc wrapper passes that cfg to that one
# crate only. Nothing is linked or installed.
set -euo pipefail

# Called by cargo as the rustc wrapper: `check-majors.sh rustc ARGS...`.
if [ -n "${CHECK_MAJORS_WRAPPER:-}" ]; then
    case " $* " in
        *" --crate-name pgrx_pg_sys "*) exec "$@" --cfg docsrs ;;
        *) exec "$@" ;;
    esac
fi

cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}/majors-check"
for major in ${MAJORS:-13 14 17}; do
    echo "check-majors: pg$major"
    CHECK_MAJORS_WRAPPER=1 DOCS_RS=1 RUSTC_WRAPPER="$PWD/scripts/check-majors.sh" CARGO_TARGET_DIR="$target" \
        cargo check -q -p pg_backups --no-default-features --features "pg$major,pg_test" --all-targets
done
