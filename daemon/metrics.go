package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the Prometheus metrics of one daemon, on their own registry (served on
// Config.MetricsListen at /metrics).
type metrics struct {
	reg        *prometheus.Registry
	phase      *prometheus.HistogramVec // steerd_migration_phase_duration_seconds{phase,technique}
	downtime   *prometheus.HistogramVec // steerd_migration_downtime_seconds{technique,strategy}
	migrations *prometheus.CounterVec   // steerd_migrations_total{result,technique,strategy}
	bytes      *prometheus.CounterVec   // steerd_image_bytes_total{direction}
}

func newMetrics(node string, dp func() Datapath) *metrics {
	labels := prometheus.Labels{"node": node}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "steerd_migration_phase_duration_seconds", ConstLabels: labels,
			Help:    "Duration of each migration phase on this node (seconds).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"phase", "technique"}),
		downtime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "steerd_migration_downtime_seconds", ConstLabels: labels,
			Help:    "Service downtime of a migration: start of checkpoint to end of restore (seconds).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"technique", "strategy"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "steerd_migrations_total", ConstLabels: labels,
			Help: "Migrations this node ran as the source, by result (succeeded, rolled-back, failed).",
		}, []string{"result", "technique", "strategy"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "steerd_image_bytes_total", ConstLabels: labels,
			Help: "Checkpoint image bytes moved over the peer channel (direction sent or received).",
		}, []string{"direction"}),
	}
	m.reg.MustRegister(m.phase, m.downtime, m.migrations, m.bytes,
		&datapathCollector{dp: dp, desc: prometheus.NewDesc("steerd_datapath_packets_total",
			"XDP datapath counters by reason (packets).", []string{"reason"}, labels)},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// datapathCollector exports Datapath.Counters at scrape time.
type datapathCollector struct {
	dp   func() Datapath
	desc *prometheus.Desc
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	dp := c.dp()
	if dp == nil {
		return
	}
	cs, err := dp.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for reason, v := range cs {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), reason)
	}
}
