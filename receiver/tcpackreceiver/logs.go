package tcpackreceiver

import (
	"net/netip"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"
)

// addrString is an event's address attribute: empty (and so left out) when the kernel gave none.
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// tidyRecords drops attributes the event did not have (the generated builder records every
// declared attribute, empty or not): empty strings, and port 0 for protocols without ports.
// It also marks the records as informational.
func tidyRecords(logs plog.Logs) {
	rls := logs.ResourceLogs()
	for i := 0; i < rls.Len(); i++ {
		sls := rls.At(i).ScopeLogs()
		for j := 0; j < sls.Len(); j++ {
			recs := sls.At(j).LogRecords()
			for k := 0; k < recs.Len(); k++ {
				rec := recs.At(k)
				rec.SetSeverityNumber(plog.SeverityNumberInfo)
				rec.SetSeverityText("INFO")
				rec.Attributes().RemoveIf(func(k string, v pcommon.Value) bool {
					switch v.Type() {
					case pcommon.ValueTypeStr:
						return v.Str() == ""
					case pcommon.ValueTypeInt:
						return v.Int() == 0 && (k == "network.local.port" || k == "network.peer.port")
					case pcommon.ValueTypeDouble:
						return v.Double() < 0 // a measure the kernel could not give
					}
					return false
				})
			}
		}
	}
}

// boolValue is a gauge's value for a yes or no.
func boolValue(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
