package tcpackreceiver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver"
	"go.uber.org/zap"

	"github.com/tcpack/tcpack/internal/acks"
	"github.com/tcpack/tcpack/internal/drops"
	"github.com/tcpack/tcpack/internal/footprint"
	"github.com/tcpack/tcpack/internal/kernel"
	"github.com/tcpack/tcpack/internal/loader"
	"github.com/tcpack/tcpack/internal/quickack"
	"github.com/tcpack/tcpack/internal/txqueue"
	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// tcpackReceiver runs the probe families of one receiver config and feeds both pipelines.
type tcpackReceiver struct {
	set      receiver.Settings
	cfg      *Config
	forget   func()
	metrics  consumer.Metrics
	logs     consumer.Logs
	resource pcommon.Resource
	env      *kernel.Env
	// startTime starts every cumulative series; hz converts jiffies (0 if unknown).
	startTime pcommon.Timestamp
	hz        int

	mu    sync.Mutex
	users int
	drops *drops.Probe
	acks  *acks.Probe
	// footprint runs only while flows are named (nil otherwise: nothing attached).
	footprint *footprint.Probe
	// quickack is the forcing side; policyErrs the policy-table errors already logged.
	quickack   *quickack.Force
	policyErrs uint64
	txqueue    *txqueue.Probe
	// ackSeries are the (netns, port) series admitted under acks.max_series, for good.
	ackSeries map[ackSeries]bool
	// reports of every family, attached or not, for tcpack.probe.attached.
	reports []loader.Report
	mb      *metadata.MetricsBuilder

	logsMu sync.Mutex
	lb     *metadata.LogsBuilder

	// consumersMu guards the detached flags: a pipeline's consumer must not be called once
	// that pipeline's receiver has shut down, because the collector may shut its exporters
	// down before the other pipeline's receiver (topological order spans pipelines).
	consumersMu     sync.RWMutex
	metricsDetached bool
	logsDetached    bool

	stop chan struct{}
	wg   sync.WaitGroup
}

func newReceiver(set receiver.Settings, cfg *Config, forget func()) *tcpackReceiver {
	return &tcpackReceiver{set: set, cfg: cfg, forget: forget}
}

func (r *tcpackReceiver) setMetricsConsumer(c consumer.Metrics) { r.metrics = c }
func (r *tcpackReceiver) setLogsConsumer(c consumer.Logs)       { r.logs = c }

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

// sendMetrics hands metrics to the metrics pipeline unless it has shut down.
func (r *tcpackReceiver) sendMetrics(ctx context.Context, md pmetric.Metrics) error {
	r.consumersMu.RLock()
	defer r.consumersMu.RUnlock()
	if r.metrics == nil || r.metricsDetached {
		return nil
	}
	return r.metrics.ConsumeMetrics(ctx, md)
}

// detach is called when one pipeline's receiver shuts down, before release: from then on
// that pipeline is never called again. The forcing side is given back while the logs
// pipeline still runs, so its release events are delivered.
func (r *tcpackReceiver) detach(logsPipeline bool) {
	if logsPipeline {
		r.mu.Lock()
		if r.quickack != nil {
			r.stopCollecting()
			if err := r.quickack.Close(); err != nil {
				r.set.Logger.Warn("quickack shutdown", zap.Error(err))
			}
			r.quickack = nil
		}
		r.mu.Unlock()
	}
	r.consumersMu.Lock()
	if logsPipeline {
		r.logsDetached = true
	} else {
		r.metricsDetached = true
	}
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
	r.env = env
	rb := r.newResourceBuilder()
	r.resource = rb.Emit()
	r.startTime = pcommon.NewTimestampFromTime(time.Now())
	r.mb = metadata.NewMetricsBuilder(r.cfg.MetricsBuilderConfig, r.set, metadata.WithStartTime(r.startTime))
	r.lb = metadata.NewLogsBuilder(r.cfg.logsBuilderConfig(), r.set)
	r.reports = nil

	var failed []error
	if r.cfg.Drops.Enabled {
		cfg := r.cfg.dropsConfig(r.logs != nil)
		var sink func([]drops.Event)
		if r.logs != nil {
			sink = r.consumeDropEvents
		}
		p, err := drops.Start(env, cfg, sink)
		if err != nil {
			log.Error("drops family not started", zap.Error(err))
			failed = append(failed, err)
			r.reports = append(r.reports, notAttached(drops.Family, drops.HookNames()))
		} else {
			r.drops = p
			r.reports = append(r.reports, p.Report())
		}
	}
	if r.cfg.Acks.Enabled || r.cfg.Quickack.Enabled {
		if r.hz, err = kernel.HZ(); err != nil {
			log.Warn("kernel tick rate unknown: tcpack.ack.ato left out of events, bounded quick ACKs assume HZ=250", zap.Error(err))
		}
	}
	if r.cfg.Acks.Enabled {
		var sink func([]acks.Event)
		if r.logs != nil {
			sink = r.consumeAckEvents
		}
		p, err := acks.Start(env, r.cfg.acksConfig(r.logs != nil, r.hz), sink)
		if err != nil {
			log.Error("acks family not started", zap.Error(err))
			failed = append(failed, err)
			r.reports = append(r.reports, notAttached(acks.Family, acks.HookNames()))
		} else {
			r.acks = p
			r.ackSeries = map[ackSeries]bool{}
			r.reports = append(r.reports, p.Report())
		}
	}
	if r.cfg.Quickack.Enabled {
		cfg, err := r.cfg.Quickack.quickackConfig()
		if err == nil {
			cfg.HZ = r.hz
			cfg.RingBufferBytes, cfg.FlushInterval = r.cfg.RingBuffer.SizeBytes, r.cfg.RingBuffer.FlushInterval
			// Forcing events are few and each matters: wake the reader for every page.
			cfg.WakeupBytes = min(r.cfg.RingBuffer.WakeupBytes, 4096)
			var f *quickack.Force
			if f, err = quickack.Start(env, cfg, r.consumeQuickackEvents); err == nil {
				r.quickack = f
				r.reports = append(r.reports, f.Report())
			}
		}
		if err != nil {
			log.Error("quickack family not started: nothing is forced", zap.Error(err))
			failed = append(failed, err)
			r.reports = append(r.reports, notAttached(quickack.Family, quickack.HookNames()))
		}
	}
	if r.cfg.Txqueue.Enabled {
		var sink func([]txqueue.Event)
		if r.logs != nil {
			sink = r.consumeTxqueueEvents
		}
		p, err := txqueue.Start(env, r.cfg.txqueueConfig(r.logs != nil), sink)
		if err != nil {
			log.Error("txqueue family not started", zap.Error(err))
			failed = append(failed, err)
			r.reports = append(r.reports, notAttached(txqueue.Family, txqueue.HookNames()))
		} else {
			r.txqueue = p
			r.reports = append(r.reports, p.Report())
		}
	}
	if len(r.cfg.Footprint.Flows) > 0 {
		cfg, errs := r.cfg.Footprint.footprintConfig()
		err := errors.Join(errs...)
		var p *footprint.Probe
		if err == nil {
			p, err = footprint.Start(env, cfg)
		}
		if err != nil {
			log.Error("footprint family not started", zap.Error(err))
			failed = append(failed, err)
			r.reports = append(r.reports, notAttached(footprint.Family, footprint.HookNames()))
		} else {
			r.footprint = p
			r.reports = append(r.reports, p.Report())
			if s := p.Sentinels(); s != nil {
				idle := fmt.Sprintf("only %s stay attached", strings.Join(s, ", "))
				if sampled, window, period := p.SampledSentinels(); sampled != nil {
					idle = fmt.Sprintf("only %s run: %s for %s of every %s (sentinel_window, sentinel_period), the rest all the time",
						strings.Join(s, ", "), strings.Join(sampled, " and "), window, period)
				}
				log.Info(fmt.Sprintf("footprint: attach on_traffic: %s while the named flows are idle; the other layers attach when a sentinel sees a flow's packet and detach after %s without one",
					idle, cfg.IdleDetach))
			}
		}
	}
	for _, rep := range r.reports {
		for _, line := range rep.Lines() {
			log.Info(line)
		}
	}
	if r.drops == nil && r.acks == nil && r.quickack == nil && r.txqueue == nil && r.footprint == nil {
		if len(failed) == 0 {
			return errors.New("tcpack: every probe family is disabled; enable at least one (e.g. drops.enabled: true, or name footprint.flows)")
		}
		return fmt.Errorf("tcpack: no probe family could start: %w", errors.Join(failed...))
	}

	r.consumersMu.Lock()
	r.metricsDetached, r.logsDetached = false, false
	r.consumersMu.Unlock()
	r.stop = make(chan struct{})
	// Footprint loss events are derived from the counters, so a logs-only receiver with
	// flows named collects too.
	if r.metrics != nil || (r.footprint != nil && r.logs != nil) {
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

func notAttached(family string, hooks []string) loader.Report {
	rep := loader.Report{Family: family}
	for _, h := range hooks {
		rep.Hooks = append(rep.Hooks, loader.HookResult{Hook: h})
	}
	return rep
}

func (r *tcpackReceiver) shutdown() error {
	r.stopCollecting()
	var errs []error
	if r.drops != nil {
		errs = append(errs, r.drops.Close())
		r.drops = nil
	}
	if r.acks != nil {
		errs = append(errs, r.acks.Close())
		r.acks = nil
	}
	if r.quickack != nil {
		errs = append(errs, r.quickack.Close())
		r.quickack = nil
	}
	if r.txqueue != nil {
		errs = append(errs, r.txqueue.Close())
		r.txqueue = nil
	}
	if r.footprint != nil {
		errs = append(errs, r.footprint.Close())
		r.footprint = nil
	}
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
			if err := r.collect(context.Background()); err != nil {
				r.set.Logger.Warn("collect", zap.Error(err))
			}
		}
	}
}
