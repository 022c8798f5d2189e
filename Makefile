# pg_backups: make demo | make test | make install | make bench
# Every target installs what it needs first (scripts/deps.sh, idempotent).

PG_CONFIG  ?= /usr/lib/postgresql/15/bin/pg_config
PREFIX     ?= /usr/local
PGRX_DATA  ?= /tmp/pgrx-data
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps build install test unit pgrx-test e2e lint demo demo-stop bench clean

all: build

deps:
	@bash scripts/deps.sh

build: deps
	cargo build --release -p pgbackups -p pgbackups-e2e

# The extension into the system PostgreSQL 15, the agent into $(PREFIX)/bin.
install: build
	cd extension && cargo pgrx install --release --pg-config $(PG_CONFIG)
	install -m 0755 target/release/pgbackups $(PREFIX)/bin/pgbackups

# Every tier: unit, in-database (pgrx), end-to-end; then lints.
test: deps unit pgrx-test install e2e lint

unit:
	cargo test -p pgbackups-core -p pgbackups

pgrx-test:
	cd extension && cargo pgrx test pg15 --runas postgres --pgdata $(PGRX_DATA)

e2e:
	PGBACKUPS_BIN=$(CURDIR)/target/release/pgbackups cargo test --release -p pgbackups-e2e

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# Capture, restore and copy against Heroku's commands and pgcopydb.
# SCALE=0.3 for a quick run (default 1, about 1 GB); RUNS per pair (default 3).
SCALE ?= 1
RUNS  ?= 3
bench: install
	SCALE=$(SCALE) RUNS=$(RUNS) PGBACKUPS_BIN=/usr/local/bin/pgbackups target/release/pgbackups-bench

demo: install
	@bash scripts/demo.sh

demo-stop:
	@bash scripts/demo.sh stop

clean:
	cargo clean
