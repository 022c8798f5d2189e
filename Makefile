# pg_backups: make demo | make test | make install | make bench
# Every target installs what it needs first (scripts/deps.sh, idempotent).

# The PostgreSQL the extension is installed into: any major from 13 to 17
# (cargo pgrx builds the feature pgNN that this pg_config's version names).
PG_CONFIG  ?= /usr/lib/postgresql/15/bin/pg_config
# PostgreSQL 16 for the tests, from PyPI's pgserver wheel, installed by
# scripts/deps.sh into $(PG16_WHEEL); the e2e tests find it by $PG16_BIN
# (their default is the same path: tests/src/cluster.rs).
PG16_WHEEL ?= /opt/pgbackups/pg16-wheel
PG16_BIN   := $(PG16_WHEEL)/pgserver/pginstall/bin
export PG16_WHEEL PG16_BIN
PREFIX     ?= /usr/local
PGRX_DATA  ?= /tmp/pgrx-data
PGRX_DATA16 ?= /tmp/pgrx-data16
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps build install test unit pgrx-test check-majors e2e lint demo demo-stop bench bench-scale bench-capture-cost clean

all: build

deps:
	@bash scripts/deps.sh

build: deps
	cargo build --release -p pgbackups -p pgbackups-e2e

# The extension into the PostgreSQL of $(PG_CONFIG) (the system's 15 by
# default) and into the test PostgreSQL 16, the agent into $(PREFIX)/bin.
install: build
	cd extension && cargo pgrx install --release --pg-config $(PG_CONFIG)
	[ "$(realpath $(PG_CONFIG))" = "$(realpath $(PG16_BIN)/pg_config)" ] || \
		(cd extension && cargo pgrx install --release --pg-config $(PG16_BIN)/pg_config)
	install -m 0755 target/release/pgbackups $(PREFIX)/bin/pgbackups

# Every tier: unit, in-database (pgrx), the other majors type-checked,
# end-to-end; then lints.
test: deps unit pgrx-test check-majors install e2e lint

unit:
	cargo test -p pgbackups-core -p pgbackups

# The in-database tests on PostgreSQL 15 and on 16.
pgrx-test:
	cd extension && cargo pgrx test pg15 --runas postgres --pgdata $(PGRX_DATA)
	cd extension && cargo pgrx test pg16 --runas postgres --pgdata $(PGRX_DATA16)

# The extension type-checked for 13, 14 and 17, which have no headers here.
check-majors:
	bash scripts/check-majors.sh

e2e:
	PGBACKUPS_BIN=$(CURDIR)/target/release/pgbackups cargo test --release -p pgbackups-e2e

# rustfmt does not follow modules declared by a macro: the kinds (kinds!)
# are checked by name.
lint:
	cargo fmt --all --check
	rustfmt --check --edition 2021 agent/src/transfer/kinds/*.rs
	cargo clippy --workspace --all-targets -- -D warnings

# Capture, restore and copy against Heroku's commands and pgcopydb.
# SCALE=0.3 for a quick run (default 1, about 1 GB); RUNS per pair (default 3).
# SKEW=0 leaves out the skewed dataset (about 10 of the 30 minutes at
# SCALE=1), JOBS_SWEEP=0 the 1-job rows (about 6): see
# tests/src/bin/pgbackups-bench.rs.
SCALE ?= 1
RUNS  ?= 3
bench: install
	SCALE=$(SCALE) RUNS=$(RUNS) PGBACKUPS_BIN=/usr/local/bin/pgbackups target/release/pgbackups-bench

# The control database after years of service: DATABASES (default 1000)
# databases with a schedule each and SCALE x 1M transfers of history, every
# user, agent and worker call timed (median of 5). See bench/scale.sh.
bench-scale: install
	SCALE=$(SCALE) bash bench/scale.sh

# What recording contents and encrypting cost a capture: this agent, with
# and without --encrypt-to, against one built from BASELINE_REV (before
# contents were recorded). Writes bench/capture-cost.json.
BASELINE_REV ?= 9b3f6fd
bench-capture-cost: install
	SCALE=$(SCALE) RUNS=$(RUNS) PGBACKUPS_BIN=/usr/local/bin/pgbackups \
		BASELINE_BIN=$$(bash scripts/baseline.sh $(BASELINE_REV) $(CURDIR)/target/baseline) \
		target/release/pgbackups-capture-cost

demo: install
	@bash scripts/demo.sh

demo-stop:
	@bash scripts/demo.sh stop

clean:
	cargo clean
