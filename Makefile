# steerd: server-side QUIC connection migration for edge containers.
# Every target that touches namespaces, BPF or containers needs root.

export PATH := /usr/local/go/bin:/usr/local/sbin:$(PATH)

GO        ?= go
CLANG     ?= clang-19
BIN       := bin
PKGS      := ./...
TESTFLAGS ?=
# BENCH_FLAGS go to bench/run.sh, e.g. BENCH_FLAGS=--reference (copy the run into bench/results/).
BENCH_FLAGS ?=
# DEMO_FLAGS go to steerd demo, e.g. DEMO_FLAGS="--datapath nftables".
DEMO_FLAGS ?=

.PHONY: all deps build generate generate-check test test-short lint demo bench clean clean-all help

all: build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install clang-19, libbpf-dev, bpftool, runc, CRIU >= 4.2 (idempotent; root)
	./scripts/install-deps.sh

build: ## build steerd and the example binaries into bin/
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/... $(if $(wildcard examples/*/main.go),./examples/...)

generate: ## rebuild the BPF objects and their Go bindings with $(CLANG)
	$(GO) generate ./loader/...

generate-check: generate ## fail when the committed BPF objects differ from a fresh build
	git diff --exit-code -- loader/ || { echo "BPF objects are stale: run 'make generate' and commit"; exit 1; }

test: deps ## run every test, privileged ones included (root; installs what is missing first); prints the skip count
	./scripts/test.sh $(TESTFLAGS)

test-short: ## unit tests only, no root needed
	$(GO) test -short -count=1 $(PKGS)

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb].go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

demo: deps build ## live-migrate a QUIC service between two edge nodes on a netns testbed (root)
	./scripts/demo.sh $(DEMO_FLAGS)

bench: deps build ## benchmarks: migration matrix, baselines, datapath (root, < 30 min)
	./bench/run.sh $(BENCH_FLAGS)

clean: ## remove build output and the stdr-* namespaces/links whose owner process is gone
	rm -rf $(BIN)
	$(GO) run ./tests/netns/cmd/sweep || true

clean-all: ## like clean, but every stdr-* namespace/link, even one a running demo/bench/test uses
	rm -rf $(BIN)
	$(GO) run ./tests/netns/cmd/sweep -all || true
