package quickack

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// resolvedSocket is a named socket as the kernel side matches it: addresses v4-mapped,
// unspecified address or port 0 meaning any.
type resolvedSocket struct {
	netns       uint32
	local, peer netip.AddrPort
}

// any16 is the zero address the kernel side reads as "any".
var any16 = netip.AddrFrom16([16]byte{})

func mappedAddrPort(ap netip.AddrPort) netip.AddrPort {
	if !ap.IsValid() || ap.Addr().IsUnspecified() {
		port := uint16(0)
		if ap.IsValid() {
			port = ap.Port()
		}
		return netip.AddrPortFrom(any16, port)
	}
	a := ap.Addr()
	if a.Is4() {
		a = netip.AddrFrom16(a.As16())
	}
	return netip.AddrPortFrom(a, ap.Port())
}

// resolveSockets turns every quickack.sockets entry into what the kernel side matches. An
// entry by address applies in every configured namespace; one by pid and fd in the
// process's own namespace, which joins the set.
func (f *Probe) resolveSockets() error {
	for i := range f.targets {
		t := &f.targets[i]
		if t.socket == nil {
			continue
		}
		if !t.socket.byOwner() {
			for _, ns := range f.nss {
				t.resolved = append(t.resolved, resolvedSocket{netns: ns.inode,
					local: mappedAddrPort(t.socket.Local), peer: mappedAddrPort(t.socket.Peer)})
			}
			continue
		}
		r, err := f.resolveOwned(t.socket.PID, t.socket.FD)
		if err != nil {
			return fmt.Errorf("quickack.sockets: %s: %w", t.socket, err)
		}
		t.resolved = append(t.resolved, r)
	}
	return nil
}

// resolveOwned borrows the process's descriptor with pidfd_getfd, checks it is a TCP socket
// and reads its addresses. The kernel allows pidfd_getfd with ptrace rights over the process:
// CAP_SYS_PTRACE, or the same user under a permissive Yama scope.
func (f *Probe) resolveOwned(pid, fd int) (resolvedSocket, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return resolvedSocket{}, fmt.Errorf("pid %d not found", pid)
		}
		return resolvedSocket{}, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(pidfd)
	sock, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.EPERM):
			return resolvedSocket{}, fmt.Errorf("pidfd_getfd: %w; reaching another process's socket needs CAP_SYS_PTRACE", err)
		case errors.Is(err, unix.EBADF):
			return resolvedSocket{}, fmt.Errorf("fd %d is not open in pid %d", fd, pid)
		}
		return resolvedSocket{}, fmt.Errorf("pidfd_getfd: %w", err)
	}
	defer unix.Close(sock)
	proto, err := unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if errors.Is(err, unix.ENOTSOCK) {
		return resolvedSocket{}, fmt.Errorf("fd %d of pid %d is not a socket", fd, pid)
	}
	// MPTCP sockets (Go listens with MPTCP by default since 1.24) carry TCP subflows with
	// the same addresses, which is what the kernel side matches.
	if err != nil || (proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_MPTCP) {
		return resolvedSocket{}, fmt.Errorf("fd %d of pid %d is not a TCP socket", fd, pid)
	}
	local, err := unix.Getsockname(sock)
	if err != nil {
		return resolvedSocket{}, fmt.Errorf("getsockname: %w", err)
	}
	r := resolvedSocket{local: mappedAddrPort(addrPort(local))}
	if peer, err := unix.Getpeername(sock); err == nil {
		r.peer = mappedAddrPort(addrPort(peer))
	} else if errors.Is(err, unix.ENOTCONN) {
		r.peer = mappedAddrPort(netip.AddrPort{}) // a listener: what it accepts
	} else {
		return resolvedSocket{}, fmt.Errorf("getpeername: %w", err)
	}
	if r.local.Port() == 0 {
		return resolvedSocket{}, fmt.Errorf("fd %d of pid %d is neither bound nor connected", fd, pid)
	}
	// The socket's own namespace, not the process's: a process can hold sockets of
	// several (one made after setns, or received over a unix socket).
	nsfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(sock), unix.SIOCGSKNS, 0)
	if errno != 0 {
		return resolvedSocket{}, fmt.Errorf("netns of the socket (SIOCGSKNS): %w", errno)
	}
	defer unix.Close(int(nsfd))
	ns, err := f.openNamespace(fmt.Sprintf("/proc/self/fd/%d", nsfd), nil)
	if err != nil {
		return resolvedSocket{}, err
	}
	if ns.path == fmt.Sprintf("/proc/self/fd/%d", nsfd) {
		ns.path = fmt.Sprintf("netns of pid %d fd %d", pid, fd)
	}
	r.netns = ns.inode
	return r, nil
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}
