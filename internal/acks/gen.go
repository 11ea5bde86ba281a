package acks

//go:generate go tool bpf2go -cc clang-14 -target amd64 -type ack_key -type ack_stats -type ack_event -type scope_peer_key acks ../../bpf/acks.bpf.c -- -I../../bpf/headers -O2 -g -Wall -Werror -mcpu=v3
