package api

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTimeline prints events as a table, times relative to the first event of their migration:
//
//	T        NODE  PHASE         EVENT  DURATION  DETAIL
//	+0.000s  a     prepare-dest  start
//	+0.004s  b     prepare-dest  end    3.1 ms
//
// Durations are milliseconds with one decimal (MS). Events of several migrations get a
// MIGRATION column; each migration's rows are together (in the order the migrations started)
// with times relative to its own first event. Details are printed on one line. An End or Fail
// event without a Start event of its phase on its node (the container engine reports sub-phases
// such as pause and dump only when they are done, detail "engine") says when the phase began,
// computed from its duration, and the detail "engine" is spelled out.
func WriteTimeline(w io.Writer, events []Event) error {
	if len(events) == 0 {
		_, err := fmt.Fprintln(w, "(no events)")
		return err
	}
	es := append([]Event(nil), events...)
	first := map[string]time.Time{}
	for _, e := range es {
		if t, ok := first[e.Migration]; !ok || e.Time.Before(t) {
			first[e.Migration] = e.Time
		}
	}
	sort.SliceStable(es, func(i, j int) bool {
		if mi, mj := es[i].Migration, es[j].Migration; mi != mj {
			if fi, fj := first[mi], first[mj]; !fi.Equal(fj) {
				return fi.Before(fj)
			}
			return mi < mj
		}
		return es[i].Time.Before(es[j].Time)
	})
	started := map[[3]string]bool{}
	for _, e := range es {
		if e.Kind == Start {
			started[[3]string{e.Migration, e.Node, string(e.Phase)}] = true
		}
	}
	multi := len(first) > 1
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if multi {
		fmt.Fprint(tw, "MIGRATION\t")
	}
	fmt.Fprintln(tw, "T\tNODE\tPHASE\tEVENT\tDURATION\tDETAIL")
	for _, e := range es {
		t0 := first[e.Migration]
		dur := ""
		detail := e.Detail
		if e.Kind == End || e.Kind == Fail {
			if e.Duration > 0 {
				dur = MS(e.Duration)
			}
			if !started[[3]string{e.Migration, e.Node, string(e.Phase)}] {
				if detail == "engine" {
					detail = "container engine (runc/CRIU) step, reported when done"
				}
				began := fmt.Sprintf("began +%.3fs", e.Time.Add(-e.Duration).Sub(t0).Seconds())
				if detail == "" {
					detail = began
				} else {
					detail += ", " + began
				}
			}
		}
		if e.Kind == Progress || (e.Phase == PhaseTransfer && e.Total > 0) {
			detail = fmt.Sprintf("%s %s/%s", detail, Bytes(e.Bytes), Bytes(e.Total))
		}
		if multi {
			fmt.Fprintf(tw, "%s\t", e.Migration)
		}
		fmt.Fprintf(tw, "+%.3fs\t%s\t%s\t%s\t%s\t%s\n", e.Time.Sub(t0).Seconds(), e.Node, e.Phase, e.Kind, dur, OneLine(detail))
	}
	return tw.Flush()
}

// OneLine folds a multi-line detail (a CRIU log tail, joined errors) into one line: line breaks
// and tabs become " | " and spaces, surrounding space is trimmed.
func OneLine(s string) string {
	var parts []string
	for _, l := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if l = strings.TrimSpace(strings.ReplaceAll(l, "\t", " ")); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " | ")
}

// MS formats a duration as milliseconds with one decimal ("803.7 ms", "0.1 ms", "1001.1 ms"):
// the one duration style of the timeline, the migration summary and the demo.
func MS(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
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

// WriteMigration prints a migration's summary (WriteMigrationSummary) and, if it failed, its
// error.
func WriteMigration(w io.Writer, m *Migration) error {
	err := WriteMigrationSummary(w, m)
	if err == nil && m.Error != nil {
		_, err = fmt.Fprintf(w, "error: %v\n", m.Error)
	}
	return err
}

// WriteMigrationSummary prints a migration's summary line and, for a migration that succeeded
// with connections that were not ready or do not support server migration, a warning line that
// says what happens to them.
func WriteMigrationSummary(w io.Writer, m *Migration) error {
	_, err := fmt.Fprintf(w, "migration %s: %s %s -> %s (%s, %s): %s, downtime %s, %s moved, connections ready %d / not ready %d / unsupported %d\n",
		m.ID, m.Service, m.From, m.To, m.Strategy, m.Technique, m.Result, MS(m.Downtime), Bytes(m.Bytes), m.Ready, m.NotReady, m.Unsupported)
	if err != nil || m.Result != Succeeded {
		return err
	}
	if warn := MigrationWarning(m); warn != "" {
		_, err = fmt.Fprintln(w, warn)
	}
	return err
}

// MigrationWarning returns a warning about the connections that did not take part in a
// migration ("" when every connection was ready):
//
//   - not ready: the client did not acknowledge the preparation within the prepare timeout. It
//     reaches the service only through the source's forwarding until it switches to the new
//     address; if it has not when the drain ends, the connection is lost.
//   - unsupported: the client does not speak the server-migration extension. It keeps using the
//     old address, served only while the source forwards; it is cut off when the drain ends and
//     the forwarding entry is removed.
func MigrationWarning(m *Migration) string {
	var parts []string
	if m.NotReady > 0 {
		parts = append(parts, fmt.Sprintf("%d connection(s) not ready (did not acknowledge the prepare in time): they reach %s only through %s's forwarding until they switch, and are lost if they have not switched when the drain ends", m.NotReady, m.To, m.From))
	}
	if m.Unsupported > 0 {
		parts = append(parts, fmt.Sprintf("%d connection(s) without server-migration support: they keep using %s's address, are served only while %s forwards, and are cut off when the drain ends", m.Unsupported, m.From, m.From))
	}
	if len(parts) == 0 {
		return ""
	}
	return "warning: " + strings.Join(parts, "; ")
}
