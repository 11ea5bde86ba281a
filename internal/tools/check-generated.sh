#!/usr/bin/env bash
# Regenerates the eBPF objects (bpf2go) and telemetry code (mdatagen) and fails if anything
# changed: committed generated files must be exactly what `make generate` produces.
set -euo pipefail
cd "$(dirname "$0")/../.."

generated() {
	find internal receiver -type f \( -name '*_bpfel.go' -o -name '*_bpfel.o' -o -name 'generated_*.go' \
		-o -name 'documentation.md' \) -not -path '*/tools/*' | sort | xargs sha256sum
}

before=$(generated)
go generate ./...
after=$(generated)
if [ "$before" != "$after" ]; then
	echo "generated files are stale; run 'make generate' and commit the result:" >&2
	diff <(echo "$before") <(echo "$after") >&2 || true
	exit 1
fi
echo "generated files are current"
