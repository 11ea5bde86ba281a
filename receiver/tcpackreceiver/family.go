package tcpackreceiver

import (
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.uber.org/zap"

	"github.com/tcpack/tcpack/internal/eventreader"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// family is one probe family as the receiver runs it: its block of the config, its kernel
// side (a package under internal/) and its telemetry. The receiver's start, shutdown,
// collection and validation are loops over the registered families (Config.families).
type family interface {
	// name is the family's name in logs and in tcpack.probe.attached.
	name() string
	// enabled says whether the config asks for the family.
	enabled() bool
	// validate checks the family's block; it runs the same conversion start uses.
	validate() []error
	// hookNames are the family's hooks, reported as not attached when start fails.
	hookNames() []string
	// start loads and attaches the family's programs and starts delivering its events.
	start(h *familyHost) (loader.Report, error)
	// record reads the family's counters into the host's metrics builder.
	record(now pcommon.Timestamp) error
	// close detaches everything the family put into the kernel.
	close() error
}

// Optional parts of a family, asked for by type assertion.
type (
	// tickRateUser needs the kernel's HZ to convert jiffies.
	tickRateUser interface{ usesTickRate() }
	// metricsAppender adds metrics the generated builder cannot make (histograms) to each
	// batch, after the builder has emitted it.
	metricsAppender interface {
		appendMetrics(md pmetric.Metrics, now pcommon.Timestamp)
	}
	// eventsFromCounters derives events from its counters, so the receiver collects for a
	// logs pipeline alone too.
	eventsFromCounters interface{ derivesEvents() bool }
	// releasedWithLogs gives kernel state back when the logs pipeline shuts down, while
	// that pipeline can still deliver the release events.
	releasedWithLogs interface{ releaseWithLogs() }
)

// common is what every family's conversion may read besides its own block.
type common struct {
	RingBuffer RingBufferConfig
	Events     metadata.EventsConfig
	Metrics    metadata.MetricsConfig
	// forceMark is the SO_MARK the quickack family stamps in route mode (0 otherwise): the
	// ACK family counts the ACKs of sockets carrying it as forced.
	forceMark uint32
}

// SamplingConfig rate-limits sampled events in the kernel, per CPU and event kind.
type SamplingConfig struct {
	// RatePerCPU is the sustained number of events per second per CPU; 0 turns events off.
	RatePerCPU uint32 `mapstructure:"rate_per_cpu"`
	// Burst is how many events a CPU may emit at once after a quiet period.
	Burst uint32 `mapstructure:"burst"`
}

// RingBufferConfig tunes event delivery from the kernel.
type RingBufferConfig struct {
	// SizeBytes is the ring buffer size: a power of two, at least one page.
	SizeBytes uint32 `mapstructure:"size_bytes"`
	// WakeupBytes: the kernel wakes the reader only once this much is pending, because a
	// wakeup per event costs microseconds per packet.
	WakeupBytes uint32 `mapstructure:"wakeup_bytes"`
	// FlushInterval bounds how long an event waits when fewer than WakeupBytes are pending.
	FlushInterval time.Duration `mapstructure:"flush_interval"`
}

// delivery is how events of a family sampled by s travel from the kernel.
func (c common) delivery(s SamplingConfig) eventreader.Delivery {
	rb := c.RingBuffer
	return eventreader.Delivery{EventsPerSecond: s.RatePerCPU, EventBurst: s.Burst,
		RingBufferBytes: rb.SizeBytes, WakeupBytes: rb.WakeupBytes, FlushInterval: rb.FlushInterval}
}

// familyHost is what the receiver lends every family it starts.
type familyHost struct {
	env    *kernel.Env
	logger *zap.Logger
	// hz converts jiffies; 0 if the tick rate is unknown.
	hz int
	// withLogs: a logs pipeline consumes the receiver; events nobody consumes are not sampled.
	withLogs  bool
	startTime pcommon.Timestamp
	mb        *metadata.MetricsBuilder
	// sendEvents records a batch of log records and hands it to the logs pipeline; what
	// names the batch in a consumer error.
	sendEvents func(what string, record func(lb *metadata.LogsBuilder))
}

func notAttached(family string, hooks []string) loader.Report {
	rep := loader.Report{Family: family}
	for _, h := range hooks {
		rep.Hooks = append(rep.Hooks, loader.HookResult{Hook: h})
	}
	return rep
}
