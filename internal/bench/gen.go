package bench

//go:generate go tool bpf2go -cc clang-14 -target amd64 floor ../../bpf/floor.bpf.c -- -I../../bpf/headers -O2 -g -Wall -Werror
