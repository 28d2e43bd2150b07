// Package stats computes the summary statistics of the benchmark tables.
package stats

import (
	"math"
	"sort"
	"time"
)

// Quantile returns the q-quantile (0..1) of xs with linear interpolation between closest ranks
// (Hyndman & Fan type 7, the default of R and NumPy). It returns NaN for an empty slice.
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	h := q * float64(len(s)-1)
	lo := math.Floor(h)
	hi := math.Min(lo+1, float64(len(s)-1))
	return s[int(lo)] + (h-lo)*(s[int(hi)]-s[int(lo)])
}

// Summary is the median and 95th percentile of a sample, with its size.
type Summary struct {
	N           int
	Median, P95 float64
}

// Summarize returns the Summary of xs.
func Summarize(xs []float64) Summary {
	return Summary{N: len(xs), Median: Quantile(xs, 0.5), P95: Quantile(xs, 0.95)}
}

// Ms converts a duration to milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
