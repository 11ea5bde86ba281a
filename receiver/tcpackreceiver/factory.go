package tcpackreceiver

import (
	"context"
	"sync"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/scraper"
	"go.opentelemetry.io/collector/scraper/scraperhelper"

	"github.com/tcpack/tcpack/receiver/tcpackreceiver/internal/metadata"
)

// NewFactory returns the factory of the tcpack receiver.
func NewFactory() receiver.Factory {
	f := &factory{shared: map[*Config]*tcpackReceiver{}}
	return receiver.NewFactory(
		metadata.Type,
		func() component.Config { return createDefaultConfig() },
		receiver.WithMetrics(f.createMetrics, metadata.MetricsStability),
		receiver.WithLogs(f.createLogs, metadata.LogsStability),
	)
}

// factory hands the metrics and logs pipelines of one receiver config the same instance: the
// kernel programs must be loaded once, whichever pipelines consume them. (contrib's
// receivers share theirs with internal/sharedcomponent, which other modules cannot import.)
type factory struct {
	mu     sync.Mutex
	shared map[*Config]*tcpackReceiver
}

func (f *factory) instance(set receiver.Settings, cfg *Config) *tcpackReceiver {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.shared[cfg]
	if !ok {
		r = newReceiver(set, cfg, func() {
			f.mu.Lock()
			delete(f.shared, cfg)
			f.mu.Unlock()
		})
		f.shared[cfg] = r
	}
	return r
}

// createMetrics runs the metrics pipeline's collection with scraperhelper's controller; its
// scraper's start and shutdown are this pipeline's share of the instance.
func (f *factory) createMetrics(_ context.Context, set receiver.Settings, cfg component.Config, next consumer.Metrics) (receiver.Metrics, error) {
	c := cfg.(*Config)
	r := f.instance(set, c)
	r.setMetricsConsumer(next)
	h := &pipelineHandle{r: r}
	s, err := scraper.NewMetrics(r.scrape, scraper.WithStart(h.Start), scraper.WithShutdown(h.Shutdown))
	if err != nil {
		return nil, err
	}
	return scraperhelper.NewMetricsController(&c.ControllerConfig, set, next, scraperhelper.AddMetricsScraper(metadata.Type, s))
}

func (f *factory) createLogs(_ context.Context, set receiver.Settings, cfg component.Config, next consumer.Logs) (receiver.Logs, error) {
	r := f.instance(set, cfg.(*Config))
	r.setLogsConsumer(next)
	return &pipelineHandle{r: r, logs: true}, nil
}

// pipelineHandle is one pipeline's view of the shared receiver: the kernel side starts with
// the first pipeline and stops when the last one shuts down.
type pipelineHandle struct {
	r       *tcpackReceiver
	logs    bool
	started bool
}

func (h *pipelineHandle) Start(ctx context.Context, host component.Host) error {
	if err := h.r.acquire(ctx, host); err != nil {
		return err
	}
	h.started = true
	return nil
}

func (h *pipelineHandle) Shutdown(ctx context.Context) error {
	if !h.started {
		h.r.forgetIfIdle()
		return nil
	}
	h.started = false
	h.r.detach(h.logs)
	return h.r.release(ctx)
}
