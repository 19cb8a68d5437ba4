package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
)

// Figures is what one run of a benchmark measured, by key. Keys are the names of
// `bench ... --json` (docs/benchmarks.md lists them): rates are in msg/s (or transactions/s),
// keys ending in _ms are milliseconds, _mb megabytes, and ratios taken within the run end in
// _x (this library over a peer or a limit: higher is better unless the key's doc says
// otherwise) or name both sides (drain_of_raw). A figure that was not measured is absent.
type Figures map[string]float64

// set records v under key unless v is NaN (not measured).
func (f Figures) set(key string, v float64) {
	if !math.IsNaN(v) {
		f[key] = v
	}
}

// ratio records a / b under key when both were measured and b is positive.
func (f Figures) ratio(key, a, b string) {
	x, okA := f[a]
	y, okB := f[b]
	if okA && okB && y > 0 {
		f[key] = x / y
	}
}

// Stat is one key's figures over the runs that measured it.
type Stat struct {
	Median, Min, Max float64
	// Runs is how many runs measured the key.
	Runs int
}

// Stats are the figures of every run summarised per key: median, min and max.
type Stats map[string]Stat

// statsOf summarises runs per key. The median of an even number of runs is the mean of the
// two middle ones.
func statsOf(runs []Figures) Stats {
	byKey := map[string][]float64{}
	for _, r := range runs {
		for k, v := range r {
			byKey[k] = append(byKey[k], v)
		}
	}
	s := Stats{}
	for k, vs := range byKey {
		sort.Float64s(vs)
		m := vs[len(vs)/2]
		if len(vs)%2 == 0 {
			m = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
		}
		s[k] = Stat{Median: m, Min: vs[0], Max: vs[len(vs)-1], Runs: len(vs)}
	}
	return s
}

// jsonRunsKey is the key of the number of runs in the JSON object.
const jsonRunsKey = "runs"

// WriteJSON writes one flat JSON object: for every key its median, and the key with _min and
// _max appended for the extremes, plus "runs" (the most runs any key was measured in).
func (s Stats) WriteJSON(w io.Writer) error {
	obj := make(map[string]float64, 3*len(s)+1)
	runs := 0
	for k, st := range s {
		obj[k], obj[k+"_min"], obj[k+"_max"] = st.Median, st.Min, st.Max
		runs = max(runs, st.Runs)
	}
	obj[jsonRunsKey] = float64(runs)
	b, err := json.MarshalIndent(obj, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encode figures: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// writeTo writes the FIGURES section: every key with its median, min and max, in key order.
func (s Stats) writeTo(b *strings.Builder, runs int) {
	t := section(b, fmt.Sprintf("FIGURES (the --json keys): median (min - max) over %d run(s)", runs))
	fmt.Fprintln(t, "  key\tmedian\tmin\tmax\t")
	for _, k := range slices.Sorted(maps.Keys(s)) {
		st := s[k]
		fmt.Fprintf(t, "  %s\t%s\t%s\t%s\t\n", k, figureOf(st.Median), figureOf(st.Min), figureOf(st.Max))
	}
	_ = t.Flush()
}

// figureOf formats a figure: rates with thousands separators, small values with 3
// significant digits.
func figureOf(v float64) string {
	if math.Abs(v) >= 1000 {
		return num(v)
	}
	return fmt.Sprintf("%.3g", v)
}
