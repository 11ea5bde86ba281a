package tcpackreceiver

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tcpack/tcpack/internal/loader"
)

// The field checks every family's block shares. Each names the field and says how to fix it;
// where an internal package has its own check (loader.CheckAttach), it is the one that decides.

const (
	maxRatePerCPU = 100000
	maxKeys       = 1 << 20
)

// checkPorts converts ports, each 1..65535.
func checkPorts(field string, ports []int) ([]uint16, []error) {
	var out []uint16
	var errs []error
	for i, p := range ports {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("%s[%d]: port %d is out of range, use 1..65535", field, i, p))
			continue
		}
		out = append(out, uint16(p))
	}
	return out, errs
}

// parsePrefix takes a CIDR or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// checkPrefix converts one CIDR or address; example shows a valid value.
func checkPrefix(field, s, example string) (netip.Prefix, error) {
	p, err := parsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s: %q is not a CIDR or address, use e.g. %s", field, s, example)
	}
	return p, nil
}

// checkPrefixes converts a list of CIDRs or addresses.
func checkPrefixes(field string, values []string, example string) ([]netip.Prefix, []error) {
	var out []netip.Prefix
	var errs []error
	for i, s := range values {
		p, err := checkPrefix(fmt.Sprintf("%s[%d]", field, i), s, example)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, p)
	}
	return out, errs
}

// checkNetnsPaths checks network namespace files (/run/netns/NAME, /proc/PID/ns/net).
func checkNetnsPaths(field string, paths []string, most int) []error {
	var errs []error
	if most > 0 && len(paths) > most {
		errs = append(errs, fmt.Errorf("%s: %d namespaces, at most %d can be named; leave it empty for all", field, len(paths), most))
	}
	for i, path := range paths {
		if !strings.HasPrefix(path, "/") {
			errs = append(errs, fmt.Errorf("%s[%d]: %q is not an absolute path, use e.g. /proc/self/ns/net or /run/netns/NAME", field, i, path))
		}
	}
	return errs
}

// checkSampling checks a family's event rate limit; burstHint suggests a burst for the rate.
func checkSampling(field string, s SamplingConfig, burstHint string) []error {
	var errs []error
	if s.RatePerCPU > maxRatePerCPU {
		errs = append(errs, fmt.Errorf("%s.rate_per_cpu: %d events/s per CPU is more than the ring buffer can carry cheaply, use 0..%d (0 turns events off)", field, s.RatePerCPU, maxRatePerCPU))
	}
	if s.RatePerCPU > 0 && s.Burst == 0 {
		errs = append(errs, fmt.Errorf("%s.burst: must be at least 1 when rate_per_cpu is set (e.g. %s)", field, burstHint))
	}
	if s.Burst > maxRatePerCPU {
		errs = append(errs, fmt.Errorf("%s.burst: %d is too large, use 1..%d", field, s.Burst, maxRatePerCPU))
	}
	return errs
}

// checkMapSize checks the size of a kernel map a field sets.
func checkMapSize(field string, v, def uint32) error {
	if v == 0 || v > maxKeys {
		return fmt.Errorf("%s: %d is out of range, use 1..%d (default %d)", field, v, maxKeys, def)
	}
	return nil
}

// checkStrategies converts attach strategies, each one of allowed.
func checkStrategies(field string, values []string, allowed []loader.Kind) ([]loader.Kind, []error) {
	var out []loader.Kind
	var errs []error
	for i, s := range values {
		if !slices.Contains(allowed, loader.Kind(s)) {
			names := make([]string, len(allowed))
			for j, k := range allowed {
				names[j] = string(k)
			}
			use := strings.Join(names, ", ")
			if n := len(names); n > 1 {
				use = strings.Join(names[:n-1], ", ") + " or " + names[n-1]
			}
			errs = append(errs, fmt.Errorf("%s[%d]: unknown strategy %q, use %s", field, i, s, use))
			continue
		}
		out = append(out, loader.Kind(s))
	}
	return out, errs
}

// checkAttach checks a family's attach and idle_detach against loader.CheckAttach, which the
// family applies at start; onTraffic and always say what each mode attaches, for the error.
// An empty attach is the loader's default, on_traffic.
func checkAttach(family, mode string, idle, defaultIdle time.Duration, onTraffic, always string) []error {
	if loader.CheckAttach(mode, idle) == nil && (mode == loader.AttachAlways || idle != 0) {
		return nil
	}
	switch mode {
	case "", loader.AttachOnTraffic:
		return []error{fmt.Errorf("%s.idle_detach: %s is too short, use at least %s (default %s)",
			family, idle, loader.MinIdleDetach, defaultIdle)}
	}
	return []error{fmt.Errorf("%s.attach: %q, use %s (the default: %s) or %s (%s)",
		family, mode, loader.AttachOnTraffic, onTraffic, loader.AttachAlways, always)}
}

// disabledEvents lists the event kinds not to sample in the kernel: those switched off under
// events:, and every kind when no logs pipeline consumes the receiver.
func disabledEvents[K comparable](withLogs bool, enabled map[K]bool) []K {
	var off []K
	for kind, on := range enabled {
		if !on || !withLogs {
			off = append(off, kind)
		}
	}
	return off
}
