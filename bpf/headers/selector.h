/* SPDX-License-Identifier: GPL-2.0 */
/* Socket selector: the sockets a family names by local port, peer port or peer prefix, in the
 * network namespaces it names. The ACK family selects the sockets it observes, the quickack
 * family those it forces (the value says by which configured target). Every key carries a
 * netns inode; a family that names no namespace fills and looks up netns 0. A value is never
 * 0, so 0 means "not selected". User space fills and sizes both maps
 * (internal/selector). Include after common.h. */
#ifndef TCPACK_SELECTOR_H
#define TCPACK_SELECTOR_H

#define SELECT_SIDE_LOCAL 1
#define SELECT_SIDE_PEER 2

struct select_port_key {
	__u32 netns;
	__u16 port;
	__u8 side; /* SELECT_SIDE_LOCAL or SELECT_SIDE_PEER */
	__u8 _pad;
};

/* IPv4 peers are stored v4-mapped (::ffff:a.b.c.d): one trie, and dual-stack sockets
 * talking to IPv4 peers match the same entries. The netns is part of the prefix. */
struct select_peer_key {
	__u32 prefixlen;
	__u32 netns;
	__u8 addr[16];
};

/* netns inode -> 1: the namespaces the family names (SELECT_MAX_NETNS at most). */
#define SELECT_MAX_NETNS 64

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SELECT_MAX_NETNS);
	__type(key, __u32);
	__type(value, __u8);
} select_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024); /* user space sets what the config needs */
	__type(key, struct select_port_key);
	__type(value, __u32);
} select_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct select_peer_key);
	__type(value, __u32);
} select_peers SEC(".maps");

/* addr (4 or 16 bytes by l3proto) as 16 bytes, IPv4 v4-mapped. */
static __always_inline void v4_mapped(__u8 *dst, const __u8 *addr, __u16 l3proto)
{
	if (l3proto == ETH_P_IP) {
		__builtin_memset(dst, 0, 10);
		dst[10] = 0xff;
		dst[11] = 0xff;
		__builtin_memcpy(&dst[12], addr, 4);
	} else {
		__builtin_memcpy(dst, addr, 16);
	}
}

static __always_inline bool netns_selected(__u32 netns)
{
	return bpf_map_lookup_elem(&select_netns, &netns) != NULL;
}

/* The value for the socket's local port, else for its peer port, or 0. */
static __always_inline __u32 select_by_port(__u32 netns, __u16 local_port, __u16 peer_port)
{
	struct select_port_key k = {.netns = netns, .port = local_port, .side = SELECT_SIDE_LOCAL};
	__u32 *v = bpf_map_lookup_elem(&select_ports, &k);

	if (v)
		return *v;
	k.port = peer_port;
	k.side = SELECT_SIDE_PEER;
	v = bpf_map_lookup_elem(&select_ports, &k);
	return v ? *v : 0;
}

/* The value for the longest prefix holding the flow's peer address, or 0. */
static __always_inline __u32 select_by_peer(__u32 netns, const struct flow *f)
{
	struct select_peer_key k = {.prefixlen = 32 + 128, .netns = netns};
	__u32 *v;

	v4_mapped(k.addr, f->peer_addr, f->l3proto);
	v = bpf_map_lookup_elem(&select_peers, &k);
	return v ? *v : 0;
}

#endif
