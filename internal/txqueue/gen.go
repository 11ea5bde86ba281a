package txqueue

//go:generate go tool bpf2go -cc clang-14 -target amd64 -type queue_key -type queue_value -type queue_slot -type if_key -type if_value -type flow_key -type flow_value -type moved_event -type otherhost_event -type flow_walk_record -type closed_flow_key -type closed_flow_value txqueue ../../bpf/txqueue.bpf.c -- -I../../bpf/headers -O2 -g -Wall -Werror
