package quickack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteProtocol tags every rule and route tcpack creates (the rtm_protocol / FRA_PROTOCOL of
// `ip rule ... protocol 172`), so a restart after a crash finds and removes its own leftovers
// and never touches anything else. 172 is not assigned in iproute2's rt_protos.
const RouteProtocol = 172

// mainTable is RT_TABLE_MAIN, whose unicast routes the policy table mirrors.
const mainTable = unix.RT_TABLE_MAIN

// resyncEvery bounds how long the policy table can lag the main table when a change is not
// announced: IPv4 routes flushed by a link going down produce no RTM_DELROUTE.
const resyncEvery = 2 * time.Second

// policy is the route-mode plumbing of one network namespace: `ip rule fwmark M lookup T`
// for IPv4 and IPv6, and table T kept a copy of the main table's unicast routes with
// `quickack 1`. Marked sockets thus route exactly as before, but with quick ACKs.
type policy struct {
	ns       string // for messages
	h        *netlink.Handle
	nsHandle netns.NsHandle
	mark     uint32
	table    int
	priority int

	mu       sync.Mutex
	syncErrs uint64
	lastErr  error

	stop chan struct{}
	done chan struct{}
}

// installPolicy removes leftovers of an earlier run in the namespace, checks that the mark,
// table and priority are free, then installs the rules and fills the table.
func installPolicy(nsName string, nsHandle netns.NsHandle, mark uint32, table, priority int, routes []netip.Prefix) (*policy, error) {
	h, err := netlink.NewHandleAt(nsHandle, unix.NETLINK_ROUTE) // only routing: other netlink families may be modules not loaded
	if err != nil {
		return nil, fmt.Errorf("netns %s: netlink: %w", nsName, err)
	}
	p := &policy{ns: nsName, h: h, nsHandle: nsHandle, mark: mark, table: table, priority: priority}
	if err := p.removeOurs(); err != nil {
		h.Close()
		return nil, err
	}
	if err := p.checkFree(); err != nil {
		h.Close()
		return nil, err
	}
	if err := p.resync(); err != nil {
		p.removeOurs()
		h.Close()
		return nil, err
	}
	mask := uint32(0xffffffff)
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		r := p.rule(family)
		r.Mask = &mask
		if err := h.RuleAdd(r); err != nil {
			p.removeOurs()
			h.Close()
			return nil, fmt.Errorf("netns %s: add rule fwmark %#x lookup %d pref %d: %w", nsName, mark, table, priority, err)
		}
	}
	// Route targets: everything towards them goes through the table, marked or not.
	for _, dst := range routes {
		family := unix.AF_INET6
		if dst.Addr().Is4() {
			family = unix.AF_INET
		}
		r := p.rule(family)
		r.Mark = 0
		r.Dst = &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}
		if err := h.RuleAdd(r); err != nil {
			p.removeOurs()
			h.Close()
			return nil, fmt.Errorf("quickack.routes: %s: netns %s: add rule to %s lookup %d: %w", dst, nsName, dst, table, err)
		}
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go p.keepSynced()
	return p, nil
}

func (p *policy) rule(family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Mark = p.mark
	r.Table = p.table
	r.Priority = p.priority
	r.Protocol = RouteProtocol
	return r
}

// removeOurs deletes every rule and route tagged with RouteProtocol, in any table.
func (p *policy) removeOurs() error {
	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := p.h.RuleList(family)
		if err != nil {
			errs = append(errs, fmt.Errorf("netns %s: list rules: %w", p.ns, err))
			continue
		}
		for _, r := range rules {
			if r.Protocol != RouteProtocol {
				continue
			}
			r := r
			if err := p.h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("netns %s: delete rule pref %d: %w", p.ns, r.Priority, err))
			}
		}
		routes, err := p.h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: RouteProtocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			errs = append(errs, fmt.Errorf("netns %s: list routes: %w", p.ns, err))
			continue
		}
		for _, r := range routes {
			r := r
			if err := p.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("netns %s: delete route %s table %d: %w", p.ns, r.Dst, r.Table, err))
			}
		}
	}
	return errors.Join(errs...)
}

// checkFree refuses to share a mark, a rule priority or a table with anything not ours.
func (p *policy) checkFree() error {
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := p.h.RuleList(family)
		if err != nil {
			return fmt.Errorf("netns %s: list rules: %w", p.ns, err)
		}
		for _, r := range rules {
			if r.Protocol == RouteProtocol {
				continue
			}
			if r.Mark != 0 && r.Mark&maskOf(r) == p.mark&maskOf(r) {
				return fmt.Errorf("quickack.mark: %#x is already used by `ip rule` pref %d (fwmark %#x lookup %d) in netns %s; choose another quickack.mark",
					p.mark, r.Priority, r.Mark, r.Table, p.ns)
			}
			if r.Priority == p.priority {
				return fmt.Errorf("quickack.rule_priority: pref %d is already taken by `ip rule` lookup %d in netns %s; choose another quickack.rule_priority",
					p.priority, r.Table, p.ns)
			}
			if r.Table == p.table {
				return fmt.Errorf("quickack.table: table %d is already used by `ip rule` pref %d in netns %s; choose another quickack.table",
					p.table, r.Priority, p.ns)
			}
		}
		routes, err := p.h.RouteListFiltered(family, &netlink.Route{Table: p.table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("netns %s: list table %d: %w", p.ns, p.table, err)
		}
		for _, r := range routes {
			if r.Protocol != RouteProtocol {
				return fmt.Errorf("quickack.table: table %d already holds routes (%s) in netns %s; choose another quickack.table",
					p.table, r, p.ns)
			}
		}
	}
	return nil
}

func maskOf(r netlink.Rule) uint32 {
	if r.Mask != nil {
		return *r.Mask
	}
	return 0xffffffff
}

// routeKey identifies a route apart from its table, protocol and metrics.
func routeKey(r netlink.Route) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d|%v|%v|%v|%d|%d|%d|%d", r.Family, r.Dst, r.Gw, r.Src, r.LinkIndex, r.Priority, r.Scope, r.Type)
	for _, nh := range r.MultiPath {
		fmt.Fprintf(&b, "|nh %d %v %d", nh.LinkIndex, nh.Gw, nh.Hops)
	}
	return b.String()
}

// resync makes table T the main table's unicast routes, each with quickack 1.
func (p *policy) resync() error {
	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		main, err := p.h.RouteListFiltered(family, &netlink.Route{Table: mainTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("netns %s: list main table: %w", p.ns, err)
		}
		have, err := p.h.RouteListFiltered(family, &netlink.Route{Table: p.table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("netns %s: list table %d: %w", p.ns, p.table, err)
		}
		want := map[string]netlink.Route{}
		for _, r := range main {
			if r.Type != unix.RTN_UNICAST || r.Protocol == RouteProtocol {
				continue
			}
			want[routeKey(r)] = r
		}
		for _, r := range have {
			k := routeKey(r)
			if _, ok := want[k]; ok && r.QuickACK == 1 && r.Protocol == RouteProtocol {
				delete(want, k)
				continue
			}
			if r.Protocol != RouteProtocol {
				continue // checkFree refused such a table at start; never touch others' routes
			}
			r := r
			if err := p.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete stale %s: %w", r.Dst, err))
			}
		}
		keys := make([]string, 0, len(want))
		for k := range want {
			keys = append(keys, k)
		}
		// Gateway routes need the connected route to their gateway in the same table: add
		// direct routes (no gateway) first.
		sort.Slice(keys, func(i, j int) bool {
			gi, gj := want[keys[i]].Gw != nil || len(want[keys[i]].MultiPath) > 0, want[keys[j]].Gw != nil || len(want[keys[j]].MultiPath) > 0
			if gi != gj {
				return !gi
			}
			return keys[i] < keys[j]
		})
		for _, k := range keys {
			r := want[k]
			r.Table = p.table
			r.Protocol = RouteProtocol
			r.QuickACK = 1
			if err := p.h.RouteReplace(&r); err != nil {
				errs = append(errs, fmt.Errorf("copy %s: %w", describeRoute(r), err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netns %s: table %d: %w", p.ns, p.table, err)
	}
	return nil
}

func describeRoute(r netlink.Route) string {
	dst := "default"
	if r.Dst != nil {
		dst = r.Dst.String()
	}
	if r.Gw != nil {
		return dst + " via " + r.Gw.String()
	}
	return dst + " dev " + fmt.Sprint(r.LinkIndex)
}

// keepSynced follows route and link changes in the namespace (link down/up flushes and
// re-adds routes), and resyncs on a timer for what netlink does not announce.
func (p *policy) keepSynced() {
	defer close(p.done)
	routes := make(chan netlink.RouteUpdate, 64)
	links := make(chan netlink.LinkUpdate, 64)
	subDone := make(chan struct{})
	defer close(subDone)
	ns := p.nsHandle
	_ = netlink.RouteSubscribeWithOptions(routes, subDone, netlink.RouteSubscribeOptions{Namespace: &ns})
	_ = netlink.LinkSubscribeWithOptions(links, subDone, netlink.LinkSubscribeOptions{Namespace: &ns})
	tick := time.NewTicker(resyncEvery)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case u, ok := <-routes:
			if !ok {
				routes = nil
				continue
			}
			if u.Table == p.table && u.Protocol == RouteProtocol && u.Type == unix.RTM_NEWROUTE {
				continue // our own copies
			}
		case _, ok := <-links:
			if !ok {
				links = nil
				continue
			}
		case <-tick.C:
		}
		// Coalesce a burst of updates (a link change brings several) into one resync.
		drain(routes, links)
		err := p.resync()
		p.mu.Lock()
		if err != nil {
			p.syncErrs++
			p.lastErr = err
		}
		p.mu.Unlock()
	}
}

func drain(routes chan netlink.RouteUpdate, links chan netlink.LinkUpdate) {
	timeout := time.After(20 * time.Millisecond)
	for {
		select {
		case <-routes:
		case <-links:
		case <-timeout:
			return
		}
	}
}

// syncErrors is how many resyncs failed, and the last failure.
func (p *policy) syncErrors() (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.syncErrs, p.lastErr
}

// close stops following changes and removes the rules and the table.
func (p *policy) close() error {
	if p.stop != nil {
		close(p.stop)
		<-p.done
		p.stop = nil
	}
	err := p.removeOurs()
	p.h.Close()
	return err
}
