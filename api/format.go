package api

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTimeline prints events as a table relative to the first one:
//
//	+0.000s  a  prepare-dest  start
//	+0.004s  b  prepare-dest  end    3.1ms
func WriteTimeline(w io.Writer, events []Event) error {
	if len(events) == 0 {
		_, err := fmt.Fprintln(w, "(no events)")
		return err
	}
	es := append([]Event(nil), events...)
	sort.SliceStable(es, func(i, j int) bool { return es[i].Time.Before(es[j].Time) })
	t0 := es[0].Time
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "T\tNODE\tPHASE\tEVENT\tDURATION\tDETAIL")
	for _, e := range es {
		dur := ""
		if e.Kind == End || e.Kind == Fail {
			if e.Duration > 0 {
				dur = e.Duration.Round(10 * time.Microsecond).String()
			}
		}
		detail := e.Detail
		if e.Kind == Progress || (e.Phase == PhaseTransfer && e.Total > 0) {
			detail = fmt.Sprintf("%s %s/%s", detail, Bytes(e.Bytes), Bytes(e.Total))
		}
		fmt.Fprintf(tw, "+%.3fs\t%s\t%s\t%s\t%s\t%s\n", e.Time.Sub(t0).Seconds(), e.Node, e.Phase, e.Kind, dur, strings.TrimSpace(detail))
	}
	return tw.Flush()
}

// Bytes formats a byte count with a binary unit (B, KiB, MiB, GiB).
func Bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// WriteMigration prints a migration's summary line and, if it failed, its error.
func WriteMigration(w io.Writer, m *Migration) error {
	_, err := fmt.Fprintf(w, "migration %s: %s %s -> %s (%s, %s): %s, downtime %v, %s moved, connections ready %d / not ready %d / unsupported %d\n",
		m.ID, m.Service, m.From, m.To, m.Strategy, m.Technique, m.Result, m.Downtime.Round(time.Microsecond), Bytes(m.Bytes), m.Ready, m.NotReady, m.Unsupported)
	if err == nil && m.Error != nil {
		_, err = fmt.Fprintf(w, "error: %v\n", m.Error)
	}
	return err
}
