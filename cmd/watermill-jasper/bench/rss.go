package bench

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
)

// resetPeakRSS returns the memory the benchmark no longer uses to the OS (a collection, then
// debug.FreeOSMemory) and resets the kernel's peak resident set of this process (writing 5 to
// /proc/self/clear_refs, Linux 4.0 and later), so that peakRSSMB then reports the peak of
// what runs after it: a drain leg's. It reports whether the reset worked.
func resetPeakRSS() bool {
	runtime.GC()
	debug.FreeOSMemory()
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// peakRSSMB is the peak resident set of this process since the last resetPeakRSS, in MB
// (VmHWM of /proc/self/status), or NaN where the kernel does not report it.
func peakRSSMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nan
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) == 3 && string(f[0]) == "VmHWM:" && string(f[2]) == "kB" {
			kb, err := strconv.ParseFloat(string(f[1]), 64)
			if err != nil {
				return nan
			}
			return kb / 1024
		}
	}
	return nan
}
