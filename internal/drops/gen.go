package drops

//go:generate go tool bpf2go -cc clang-14 -target amd64 -type event -type drop_key -type drop_value -type tcp_event_key drops ../../bpf/drops.bpf.c -- -I../../bpf/headers -O2 -g -Wall -Werror
