package acks

// -mcpu=v3: stats_id_for hands out indexes with a fetch-and-add that returns the old value
// (BPF atomics with fetch, Linux 5.12 and later).
//go:generate go tool bpf2go -cc clang-14 -target amd64 -type ack_key -type ack_stats -type ack_event -type ack_walk_record acks ../../bpf/acks.bpf.c -- -I../../bpf/headers -O2 -g -Wall -Werror -mcpu=v3
