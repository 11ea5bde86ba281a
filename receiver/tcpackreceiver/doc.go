// Package tcpackreceiver is the OpenTelemetry glue of tcpack: it starts the probe families
// in internal/, turns their typed records into metrics and events, and owns their lifecycle.
//
//go:generate go tool -modfile=../../internal/tools/go.mod mdatagen metadata.yaml
package tcpackreceiver // import "github.com/tcpack/tcpack/receiver/tcpackreceiver"
