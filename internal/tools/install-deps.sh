#!/usr/bin/env bash
# Installs what `make generate`, the kernel tests and the benchmarks need, from Debian's
# packages, only when something is missing. CI runs it on a fresh machine through `make test`.
set -euo pipefail

need=()
# bpf2go runs clang-14 and llvm-strip-14: committed objects are byte-compared by
# check-generated, so the compiler version is pinned.
command -v clang-14 >/dev/null || need+=(clang-14)
command -v llvm-strip-14 >/dev/null || need+=(llvm-14)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null || need+=(bpftool)
command -v ip >/dev/null && command -v tc >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v iperf3 >/dev/null || need+=(iperf3)
# The footprint tests switch veth offloads (GRO at the receiver) with ethtool.
command -v ethtool >/dev/null || need+=(ethtool)

if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "missing packages: ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
	exit 1
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
