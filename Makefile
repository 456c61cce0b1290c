# loadwave — developer entry points. Every target is a thin wrapper over scripts/.
#
#   make local       the whole stack (Kafka, orchestrator, 3 drivers, target) and two demo tests:
#                    docker compose when a Docker (or Podman) engine answers, native processes
#                    otherwise; LOADWAVE_LOCAL=compose|native forces one
#   make local-down  stop what `make local` started
#   make images      the driver, target and orchestrator images (release)
#   make compose-check  images built from the Dockerfiles, the compose stack up under Podman,
#                    an Avalanche and a Tsunami test counted against the target, down
#   make local-aws   the AWS shape without an account: the Lambda binaries under AWS's runtime
#                    interface emulator, moto for S3 and ECS, a real Kafka for MSK
#   make local-aws-down  stop it
#   make api-check   schemathesis (--checks all) against the orchestrator's /openapi.json
#   make infra-check terraform fmt/validate, checkov, tfsec and our own checks of infra/
#   make build-lambda the Lambda zips (cargo lambda; LOADWAVE_LAMBDA_ARCH=arm64|x86_64)
#   make deploy      preflight, Lambda zips, images to ECR, terraform apply; prints the API URL
#   make destroy     terraform destroy (images included)
#   make kafka-up    a single-node Kafka broker (KRaft) on 127.0.0.1:$KAFKA_PORT (9092)
#   make kafka-down  stop it
#   make test        everything CI runs: build once, start Kafka, unit and integration tests
#   make lint        rustfmt and clippy, warnings denied
#   make bench       loadwave against wrk and oha on this machine, interleaved; then
#                    make bench-controller
#   make bench-controller  the controller at scale: 1,000 drivers in process, snapshot
#                    bytes of an hour-long test, and hundreds of drivers over a real Kafka

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: local local-down local-aws local-aws-down images compose-check api-check infra-check build-lambda deploy destroy kafka-up kafka-down test lint bench bench-controller build build-release

build:
	$(CARGO) build --workspace --bins --tests

build-release:
	$(CARGO) build --release --bins

local:
	@mode=$${LOADWAVE_LOCAL:-auto}; \
	if [ "$$mode" = compose ] || { [ "$$mode" = auto ] && bash scripts/compose.sh engine >/dev/null 2>&1; }; then \
	  bash scripts/compose.sh up; \
	else \
	  bash scripts/local.sh up; \
	fi

local-down:
	bash scripts/compose.sh down
	bash scripts/local.sh down

images:
	bash scripts/images.sh all

compose-check:
	bash scripts/compose-check.sh

local-aws:
	bash scripts/local-aws.sh up

local-aws-down:
	bash scripts/local-aws.sh down

api-check:
	bash scripts/api-check.sh

infra-check:
	bash scripts/infra-check.sh

build-lambda:
	bash scripts/build-lambda.sh

deploy:
	bash scripts/deploy.sh deploy

destroy:
	bash scripts/deploy.sh destroy

kafka-up:
	bash scripts/kafka.sh up

kafka-down:
	bash scripts/kafka.sh down

test:
	bash scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	bash scripts/bench.sh

bench-controller:
	bash scripts/bench-controller.sh
