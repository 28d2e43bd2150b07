// Package report writes the benchmark output: CSV files, the machine description and PNG plots
// (gonum.org/v1/plot).
package report

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// WriteCSV writes header and rows to path.
func WriteCSV(path string, header []string, rows [][]string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write csv: %w", err)
	}
	w := csv.NewWriter(f)
	_ = w.Write(header)
	_ = w.WriteAll(rows)
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write csv %s: %w", path, err)
	}
	return f.Close()
}

// Machine describes the machine a run was made on.
type Machine struct {
	NProc                 int
	MemTotal, CPU, Kernel string
	Go, Runc, CRIU, NFT   string
}

// DescribeMachine reads /proc and asks the tools for their versions.
func DescribeMachine() Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				m.MemTotal = strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:"))
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, v, _ := strings.Cut(l, ":")
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	first := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "unavailable"
		}
		l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return l
	}
	m.Kernel = first("uname", "-srm")
	m.Runc = first("runc", "--version")
	m.CRIU = first("criu", "--version")
	m.NFT = first("nft", "--version")
	return m
}

// Markdown returns the machine as a markdown list.
func (m Machine) Markdown() string {
	return fmt.Sprintf("- nproc: %d\n- memory: %s\n- CPU: %s\n- kernel: %s\n- go: %s\n- runc: %s\n- criu: %s\n- nft: %s\n",
		m.NProc, m.MemTotal, m.CPU, m.Kernel, m.Go, m.Runc, m.CRIU, m.NFT)
}

// Bar is one bar of a bar chart: a label, a value and an optional error-bar top (p95).
type Bar struct {
	Label      string
	Value, Top float64
}

// BarChart writes a PNG bar chart of bars to path; with tops set it draws them as a second,
// lighter bar beside each value ("p95").
func BarChart(path, title, ylabel, valueName, topName string, bars []Bar) error {
	if len(bars) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	vals := make(plotter.Values, len(bars))
	tops := make(plotter.Values, len(bars))
	names := make([]string, len(bars))
	hasTop := false
	for i, b := range bars {
		vals[i], tops[i], names[i] = b.Value, b.Top, b.Label
		if b.Top > 0 {
			hasTop = true
		}
	}
	w := vg.Points(14)
	bv, err := plotter.NewBarChart(vals, w)
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	bv.Color = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	bv.LineStyle.Width = 0
	p.Add(bv)
	p.Legend.Add(valueName, bv)
	if hasTop {
		bv.Offset = -w / 2
		bt, err := plotter.NewBarChart(tops, w)
		if err != nil {
			return fmt.Errorf("plot %s: %w", path, err)
		}
		bt.Color = color.RGBA{R: 255, G: 127, B: 14, A: 255}
		bt.LineStyle.Width = 0
		bt.Offset = w / 2
		p.Add(bt)
		p.Legend.Add(topName, bt)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(40)
	// Head room above the highest bar for the legend.
	hi := 0.0
	for _, b := range bars {
		hi = max(hi, b.Value, b.Top)
	}
	p.Y.Min, p.Y.Max = 0, hi*1.3
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = 0.6
	p.X.Tick.Label.XAlign = -1.0 // right-aligned under the bar when rotated
	p.X.Tick.Label.YAlign = -0.5
	width := vg.Length(max(6, 0.55*float64(len(bars))+2)) * vg.Inch
	if err := p.Save(width, 4.5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

// LoadAvg returns the first three fields of /proc/loadavg (1, 5 and 15 minute load averages:
// runnable and uninterruptible tasks), or "unavailable". The machine is shared, so the summary
// records the load other work put on it at the start and the end of a run.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unavailable"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unavailable"
	}
	return strings.Join(f[:3], " ")
}
