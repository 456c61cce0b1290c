# loadwave — developer entry points. Every target is a thin wrapper over scripts/.
#
#   make local       build, start the target server, run a demo Avalanche and Tsunami test
#   make local-down  stop what `make local` started
#   make test        everything CI runs: build once, unit and integration tests
#   make lint        rustfmt and clippy, warnings denied
#   make bench       loadwave against wrk and oha on this machine, interleaved

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: local local-down test lint bench build build-release

build:
	$(CARGO) build --workspace --bins --tests

build-release:
	$(CARGO) build --release --bins

local:
	bash scripts/local.sh up

local-down:
	bash scripts/local.sh down

test:
	bash scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	bash scripts/bench.sh
