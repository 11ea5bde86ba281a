package footprint

//go:generate go tool bpf2go -cc clang-14 -target amd64 -type layer_count -type drop_key footprint ../../bpf/footprint.bpf.c -- -I../../bpf/headers -O2 -g -Wall -Werror
