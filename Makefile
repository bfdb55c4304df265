# Threadline — build, run, test.
#   make run    the all-in-one (embedded Kafka-protocol broker) with demo traffic; UI on http://127.0.0.1:16686
#   make test   every test (installs the tools the tests need first)
#   make bench  benchmarks: collector ingest and end-to-end throughput

SHELL     := /bin/bash
GO        ?= go
TOOLS     := $(CURDIR)/.tools
DATA_DIR  ?= $(CURDIR)/data
export PATH := $(TOOLS)/bin:$(PATH)

TELEMETRYGEN_VERSION := v0.161.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

BINARIES := collector indexer query threadline demo loadgen

.PHONY: all build run test test-short bench proto proto-check lint tools clean

all: build

build:
	@mkdir -p bin
	$(GO) build -o bin/ $(addprefix ./cmd/,$(BINARIES))

## run: the all-in-one on loopback with realistic demo traffic (Ctrl-C stops both).
run: build
	bin/threadline --data-dir $(DATA_DIR) --demo --alert-rules examples/alert-rules.yaml

## tools: what the tests need beyond Go — telemetrygen (Go module proxy) and
## Debian's chromium for the UI's browser tests.
tools: $(TOOLS)/bin/telemetrygen chromium

APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: chromium protoc
chromium:
	@[ -x /usr/bin/chromium ] || { $(APT) update -qq && $(APT) install -y -qq chromium >/dev/null; }

protoc:
	@command -v protoc >/dev/null || { $(APT) update -qq && $(APT) install -y -qq protobuf-compiler >/dev/null; }

$(TOOLS)/bin/telemetrygen:
	GOBIN=$(TOOLS)/bin $(GO) install github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen@$(TELEMETRYGEN_VERSION)

## test: every test, verbose so the run shows what ran.
test: tools lint
	@set -o pipefail; $(GO) test -count=1 -race -timeout 25m -v ./... > test.log 2>&1; status=$$?; \
	  grep -E '^\s*(--- (PASS|FAIL|SKIP)|ok |FAIL|panic:)' test.log; \
	  if [ $$status -ne 0 ]; then echo "--- failure details (test.log) ---"; grep -B2 -A40 -E '^\s*--- FAIL|^panic:' test.log | head -400; fi; \
	  echo "$$(grep -cE '^\s*--- PASS' test.log) passed, $$(grep -cE '^\s*--- FAIL' test.log) failed, $$(grep -cE '^\s*--- SKIP' test.log) skipped"; \
	  exit $$status

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go') | grep -v '\.pb\.go$$'); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## bench: collector ingest and end-to-end throughput (each BENCH_COUNT times:
## one run of them says little on a shared machine), plus the package benchmarks.
BENCH_COUNT ?= 3
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./span/ ./index/ ./receiver/ ./clockskew/ ./indexer/ ./logstore/
	$(GO) test -run '^$$' -bench . -benchtime 1x -count $(BENCH_COUNT) -timeout 60m -v ./bench/

## proto: regenerate the indexer read API (installs Debian's protoc if missing).
proto: protoc
	GOBIN=$(TOOLS)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS)/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	protoc -I proto --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative reader/v1/reader.proto
	protoc -I proto --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative logs/v1/logs.proto
	protoc -I proto --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative metrics/v1/metrics.proto

## proto-check: the committed generated code matches the .proto.
proto-check: proto
	git diff --exit-code -- proto/

clean:
	rm -rf bin test.log
