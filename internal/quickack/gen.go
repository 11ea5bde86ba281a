package quickack

//go:generate go tool bpf2go -cc clang-14 -target amd64 -type force_event -type target_stats -type tuple_key quickack ../../bpf/quickack.bpf.c -- -I../../bpf/headers -O2 -g -Wall -Werror
