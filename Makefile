# tcpack: two commands for users (make run, make test); the rest is for developers.
SHELL      := /bin/bash
GO         ?= go
TOOLS      := $(GO) tool -modfile=internal/tools/go.mod
COLLECTOR  := build/otelcol-tcpack/otelcol-tcpack
CONFIG     ?= testdata/config.yaml
SOURCES    := $(shell find bpf internal receiver -type f \( -name '*.go' -o -name '*.c' -o -name '*.h' -o -name '*.o' -o -name '*.yaml' \) -not -path '*/testdata/*') go.mod go.sum builder-config.yaml

.PHONY: all build run test vmtest kernel-table generate check-generated deps vmlinux bench vet image clean

all: build

## build: the otelcol-tcpack distribution, with ocb, into build/otelcol-tcpack/
build: $(COLLECTOR)

$(COLLECTOR): $(SOURCES)
	@mkdir -p build
	$(TOOLS) builder --config builder-config.yaml
	@touch $@

## run: build what is missing and run the collector with testdata/config.yaml (needs root)
run: $(COLLECTOR)
	$(COLLECTOR) --config $(CONFIG)

## test: every test, kernel and end-to-end included, then the kernel matrix (needs root);
## installs what they need
test: deps check-generated vet build
	$(GO) test -count=1 -p 1 -timeout 20m ./...
	$(MAKE) vmtest

## image: the container image, without a container engine: build/image/otelcol-tcpack.tar
## (docker/podman load, kind load image-archive, ctr images import) and build/image/oci (OCI layout)
image: $(COLLECTOR)
	$(GO) run ./internal/image/mkimage -binary $(COLLECTOR) -config deploy/image/config.yaml -out build/image

## vmtest: the kernel-facing tests on Debian's 6.1 and 6.12 kernels (qemu) and on this kernel;
## fails if a test fails or the README's kernel table differs from what the run saw
vmtest:
	internal/vmtest/vmtest.sh

## kernel-table: run the kernel matrix and rewrite the README's kernel table from it
kernel-table:
	VMTEST_UPDATE_README=1 internal/vmtest/vmtest.sh

## generate: eBPF objects (bpf2go, clang) and telemetry code (mdatagen); commit the result
generate:
	$(GO) generate ./...

## check-generated: fail if generated files differ from what make generate produces
check-generated:
	@internal/tools/check-generated.sh

## vmlinux: regenerate bpf/headers/vmlinux.h from this machine's kernel BTF (rarely needed)
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/headers/vmlinux.h

## deps: install clang, libbpf headers, bpftool, iproute2, nftables, iperf3 from Debian if missing
deps:
	@internal/tools/install-deps.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l bpf internal receiver)" || { gofmt -l bpf internal receiver; echo "gofmt needed"; exit 1; }

## bench: throughput with/without the collector and per-program cost (needs root);
## BENCH_FLAGS="-modes=txqueue -reps=11 -duration=3s" narrows or lengthens a run
bench: deps build
	TCPACK_COLLECTOR=$(CURDIR)/$(COLLECTOR) $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 60m ./internal/bench $(if $(BENCH_FLAGS),-args $(BENCH_FLAGS))

clean:
	rm -rf build
