package tcpackreceiver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver"
	"go.uber.org/zap"

	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// tcpackReceiver runs the probe families of one receiver config and feeds both pipelines.
type tcpackReceiver struct {
	set    receiver.Settings
	cfg    *Config
	forget func()
	// metrics is the metrics pipeline's consumer: its scraper controller sends to it; here
	// it only says there is one.
	metrics  consumer.Metrics
	logs     consumer.Logs
	resource pcommon.Resource
	// startTime starts every cumulative series.
	startTime pcommon.Timestamp

	mu    sync.Mutex
	users int

	// familiesMu guards the running families and the metrics builder: the scrape, the
	// logs-only collection loop and the logs pipeline's shutdown each use them.
	familiesMu sync.Mutex
	// started are the families running now, in start order.
	started []family
	// reports of every enabled family, attached or not, for tcpack.probe.attached.
	reports []loader.Report
	mb      *metadata.MetricsBuilder

	logsMu sync.Mutex
	lb     *metadata.LogsBuilder

	// consumersMu guards logsDetached: the logs consumer must not be called once the logs
	// pipeline's receiver has shut down, because the collector may shut its exporters down
	// before the metrics pipeline's receiver (topological order spans pipelines). The metrics
	// consumer is called only by the scraper controller, which stops first.
	consumersMu  sync.RWMutex
	logsDetached bool

	stop chan struct{}
	wg   sync.WaitGroup
}

func newReceiver(set receiver.Settings, cfg *Config, forget func()) *tcpackReceiver {
	return &tcpackReceiver{set: set, cfg: cfg, forget: forget}
}

func (r *tcpackReceiver) setMetricsConsumer(c consumer.Metrics) { r.metrics = c }
func (r *tcpackReceiver) setLogsConsumer(c consumer.Logs)       { r.logs = c }

// emitLogs records one batch of log records with the shared logs builder and hands it to the
// logs pipeline. Families call it from their reader goroutines and the collection loop.
func (r *tcpackReceiver) emitLogs(what string, record func(lb *metadata.LogsBuilder)) {
	r.logsMu.Lock()
	record(r.lb)
	logs := r.lb.Emit(metadata.WithLogsResource(r.resource))
	r.logsMu.Unlock()
	r.sendLogs(context.Background(), logs, what)
}

// sendLogs tidies the records and hands them to the logs pipeline, unless there are none or
// the pipeline has shut down.
func (r *tcpackReceiver) sendLogs(ctx context.Context, logs plog.Logs, what string) {
	if logs.LogRecordCount() == 0 {
		return
	}
	tidyRecords(logs)
	r.consumersMu.RLock()
	defer r.consumersMu.RUnlock()
	if r.logs == nil || r.logsDetached {
		return
	}
	if err := r.logs.ConsumeLogs(ctx, logs); err != nil {
		r.set.Logger.Warn("consume "+what, zap.Error(err))
	}
}

// detach is called when one pipeline's receiver shuts down, before release: from then on
// that pipeline is never called again. Families that change kernel state give it back while
// the logs pipeline still runs, so their release events are delivered.
func (r *tcpackReceiver) detach(logsPipeline bool) {
	if !logsPipeline {
		return
	}
	r.mu.Lock()
	r.familiesMu.Lock()
	kept := r.started[:0]
	for _, f := range r.started {
		if _, ok := f.(releasedWithLogs); !ok {
			kept = append(kept, f)
			continue
		}
		if err := f.close(); err != nil {
			r.set.Logger.Warn(f.name()+" shutdown", zap.Error(err))
		}
		// Its hooks are gone: the metrics pipeline, still running, must not report them.
		r.reports = slices.DeleteFunc(r.reports, func(rep loader.Report) bool { return rep.Family == f.name() })
	}
	r.started = kept
	r.familiesMu.Unlock()
	r.mu.Unlock()
	r.consumersMu.Lock()
	r.logsDetached = true
	r.consumersMu.Unlock()
}

func (r *tcpackReceiver) stopCollecting() {
	if r.stop != nil {
		close(r.stop)
		r.wg.Wait()
		r.stop = nil
	}
}

// acquire starts the kernel side for the first pipeline; later pipelines share it.
func (r *tcpackReceiver) acquire(_ context.Context, _ component.Host) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.users > 0 {
		r.users++
		return nil
	}
	if err := r.start(); err != nil {
		return err
	}
	r.users = 1
	return nil
}

// release stops the kernel side when the last pipeline shuts down.
func (r *tcpackReceiver) release(_ context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.users == 0 {
		return nil
	}
	r.users--
	if r.users > 0 {
		return nil
	}
	r.forget()
	return r.shutdown()
}

// forgetIfIdle drops a never-started instance from the factory, so a config that is created
// and shut down without starting (validation, failed pipelines) does not stay referenced.
func (r *tcpackReceiver) forgetIfIdle() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.users == 0 {
		r.forget()
	}
}

func (r *tcpackReceiver) start() error {
	log := r.set.Logger
	env, err := kernel.Open()
	if err != nil {
		return err
	}
	r.resource = r.newResourceBuilder().Emit()
	r.startTime = pcommon.NewTimestampFromTime(time.Now())
	r.mb = metadata.NewMetricsBuilder(r.cfg.MetricsBuilderConfig, r.set, metadata.WithStartTime(r.startTime))
	r.lb = metadata.NewLogsBuilder(r.cfg.logsBuilderConfig(), r.set)
	r.reports, r.started = nil, nil
	host := &familyHost{env: env, logger: log, withLogs: r.logs != nil, startTime: r.startTime, mb: r.mb, sendEvents: r.emitLogs}

	var enabled []family
	for _, f := range r.cfg.families() {
		if f.enabled() {
			enabled = append(enabled, f)
		}
	}
	if slices.ContainsFunc(enabled, func(f family) bool { _, ok := f.(tickRateUser); return ok }) {
		if host.hz, err = kernel.HZ(); err != nil {
			log.Warn("kernel tick rate unknown: tcpack.ack.ato left out of events, bounded quick ACKs assume HZ=250", zap.Error(err))
		}
	}
	var failed []error
	for _, f := range enabled {
		rep, err := f.start(host)
		if err != nil {
			log.Error(f.name()+" family not started", zap.Error(err))
			failed = append(failed, fmt.Errorf("%s: %w", f.name(), err))
			r.reports = append(r.reports, notAttached(f.name(), f.hookNames()))
			continue
		}
		r.started = append(r.started, f)
		r.reports = append(r.reports, rep)
	}
	for _, rep := range r.reports {
		for _, line := range rep.Lines() {
			log.Info(line)
		}
	}
	if len(r.started) == 0 {
		if len(failed) == 0 {
			return errors.New("tcpack: every probe family is disabled; enable at least one (e.g. drops.enabled: true, or name footprint.flows)")
		}
		return fmt.Errorf("tcpack: no probe family could start: %w", errors.Join(failed...))
	}

	r.consumersMu.Lock()
	r.logsDetached = false
	r.consumersMu.Unlock()
	derives := slices.ContainsFunc(r.started, func(f family) bool {
		d, ok := f.(eventsFromCounters)
		return ok && d.derivesEvents()
	})
	// With a metrics pipeline its scraper controller collects; without one, families that
	// derive events from their counters still need a collection.
	if r.metrics == nil && derives && r.logs != nil {
		r.stop = make(chan struct{})
		r.wg.Add(1)
		go r.collectLoop()
	}
	return nil
}

// nodeNameEnv names the environment variable that carries the Kubernetes node name.
const nodeNameEnv = "K8S_NODE_NAME"

func (r *tcpackReceiver) newResourceBuilder() *metadata.ResourceBuilder {
	rb := metadata.NewResourceBuilder(r.cfg.ResourceAttributes)
	if host, err := os.Hostname(); err == nil {
		rb.SetHostName(host)
	}
	// In a pod, host.name is the pod's name unless it uses the host's network (and so its UTS
	// namespace): the node name from the downward API identifies the machine either way.
	if node := os.Getenv(nodeNameEnv); node != "" {
		rb.SetK8sNodeName(node)
	}
	return rb
}

func (r *tcpackReceiver) shutdown() error {
	r.stopCollecting()
	r.familiesMu.Lock()
	defer r.familiesMu.Unlock()
	var errs []error
	for _, f := range r.started {
		errs = append(errs, f.close())
	}
	r.started = nil
	return errors.Join(errs...)
}

func (r *tcpackReceiver) collectLoop() {
	defer r.wg.Done()
	ticker := time.NewTicker(r.cfg.CollectionInterval)
	defer ticker.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-ticker.C:
			r.scrape(context.Background())
		}
	}
}

// scrape reads every running family's cumulative counters into one batch of metrics.
func (r *tcpackReceiver) scrape(context.Context) (pmetric.Metrics, error) {
	r.familiesMu.Lock()
	defer r.familiesMu.Unlock()
	if len(r.started) == 0 {
		return pmetric.NewMetrics(), nil
	}
	md, err := r.collect()
	if err != nil {
		r.set.Logger.Warn("collect", zap.Error(err))
	}
	return md, err
}

func (r *tcpackReceiver) collect() (pmetric.Metrics, error) {
	now := pcommon.NewTimestampFromTime(time.Now())
	r.recordProbeReports(now)
	for _, f := range r.started {
		if err := f.record(now); err != nil {
			return pmetric.NewMetrics(), fmt.Errorf("%s: %w", f.name(), err)
		}
	}
	md := r.mb.Emit(metadata.WithResource(r.resource))
	for _, f := range r.started {
		if a, ok := f.(metricsAppender); ok {
			a.appendMetrics(md, now)
		}
	}
	return md, nil
}

func (r *tcpackReceiver) recordProbeReports(now pcommon.Timestamp) {
	for _, rep := range r.reports {
		for _, h := range rep.Hooks {
			attached, strategy := int64(0), "none"
			if h.Attached != nil {
				attached, strategy = 1, h.Attached.String()
			}
			r.mb.RecordTcpackProbeAttachedDataPoint(now, attached, rep.Family, h.Hook, strategy)
		}
	}
}
