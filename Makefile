# Run `make` or `make help` for the list of targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
PROGRAMS := csvreader crmintegrator fakecrm
GOFILES = $(shell find . -name '*.go' -not -path './.pg/*' -not -path './bin/*')
# Tests get a disposable PostgreSQL unless DATABASE_URL is set.
WITH_PG := PG_FAST=1 scripts/with-pg

.DEFAULT_GOAL := help
.PHONY: help build test check fmt-check vet compose-check demo bench fuzz replay replay-update clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Stamp the commit into the binaries (-version) when building from a checkout.
BUILDVCS := $(if $(wildcard .git),true,false)

build: ## build bin/csvreader, bin/crmintegrator and bin/fakecrm
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=$(BUILDVCS) -o $(BIN)/csvreader ./csvreader
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=$(BUILDVCS) -o $(BIN)/crmintegrator ./crmintegrator
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=$(BUILDVCS) -o $(BIN)/fakecrm ./crmintegrator/cmd/fakecrm

test: fmt-check vet compose-check ## gofmt check, go vet, go test -race against a real PostgreSQL
	$(WITH_PG) bash -c '$(GO) test -race -count=1 -timeout 12m ./... && \
		echo "# the fault tests again at full speed: -race slows them enough to hide timing bugs" && \
		$(GO) test -count=1 -timeout 5m ./csvreader/...'

check: test ## alias of test

fmt-check: ## fail when gofmt would change a file
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet: ## go vet
	$(GO) vet ./...

# With docker-compose config only (no Docker engine needed): valid with
# nothing set and with the observability profile, no secret in the file or
# in a program's environment, ports on 127.0.0.1 (scripts/compose-check).
compose-check: ## validate docker-compose.yml (needs docker-compose; skipped, saying so, without it)
	@scripts/compose-check

# The CRM API of the demo: generic, hubspot or salesforce (make demo CRM=salesforce).
CRM ?= generic

demo: build ## the whole duo on a generated export against fakecrm and a disposable PostgreSQL (CRM=hubspot or CRM=salesforce: their APIs)
	CRM=$(CRM) scripts/with-pg scripts/demo

bench: build ## benchmarks: end to end vs psql \copy, memory, CRM quota, flaky CRM, Go benchmarks
	scripts/with-pg scripts/bench

fuzz: ## run every fuzz target for FUZZTIME (default 1m) each
	scripts/fuzz $${FUZZTIME:-1m}

# Fixture folders to replay; any folder of fixture folders, or one fixture.
REPLAY_DIR ?= testdata/replay

# `csvreader replay` takes crmintegrator and fakecrm from beside itself: $(BIN).
# $(value …) keeps a regexp's $ (REPLAY_FLAGS='-run ^clean$ -runs 3') from make.
replay: build ## replay the fixtures under REPLAY_DIR (default testdata/replay) through the whole duo and diff against their goldens (csvreader replay; docs/replay.md)
	$(WITH_PG) $(BIN)/csvreader replay $(value REPLAY_FLAGS) $(value REPLAY_DIR)

replay-update: build ## rewrite the goldens of the fixtures under REPLAY_DIR (review them with git diff)
	$(WITH_PG) $(BIN)/csvreader replay -update $(value REPLAY_FLAGS) $(value REPLAY_DIR)

clean: ## remove binaries, disposable clusters and generated data
	@for d in .pg/*/; do [ -d "$$d" ] && scripts/pg stop "$$d"; done; true
	rm -rf $(BIN) .pg .bench .fuzz
