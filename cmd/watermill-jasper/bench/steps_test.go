package bench

import (
	"bytes"
	"sync"
	"testing"
)

// stepRecorder is a progress writer that is a Stepper: it keeps the progress lines and the
// steps reported.
type stepRecorder struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	steps [][2]int64 // done, total
}

// Write keeps a progress line.
func (r *stepRecorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(b)
}

// String returns the progress lines.
func (r *stepRecorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

// Step keeps a step.
func (r *stepRecorder) Step(done, total int64, _ string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, [2]int64{done, total})
}

// check checks that the steps went from 0 to their total, one at a time, and that the total
// announced at the start was the number of legs run.
func (r *stepRecorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.steps) < 2 {
		t.Fatalf("steps reported: %v", r.steps)
	}
	total := r.steps[0][1]
	for i, s := range r.steps {
		if s[0] != int64(i) || s[1] != total {
			t.Fatalf("step %d is %d of %d, want %d of %d (every step: %v)", i, s[0], s[1], i, total, r.steps)
		}
	}
	if last := r.steps[len(r.steps)-1]; last[0] != total {
		t.Errorf("the last step is %d of %d: the total does not count every leg", last[0], last[1])
	}
}
