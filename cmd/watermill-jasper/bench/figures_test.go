package bench

import (
	"bytes"
	"encoding/json"
	"testing"
)

// statsOf takes each key's median over the runs that measured it (the mean of the two middle
// ones for an even count), min and max; WriteJSON writes them flat with _min and _max.
func TestStatsAndJSON(t *testing.T) {
	runs := []Figures{{"a": 3, "b": 10}, {"a": 1}, {"a": 2, "b": 20}, {"a": 10}}
	s := statsOf(runs)
	if got, want := s["a"], (Stat{Median: 2.5, Min: 1, Max: 10, Runs: 4}); got != want {
		t.Errorf("a: %+v, want %+v", got, want)
	}
	if got, want := s["b"], (Stat{Median: 15, Min: 10, Max: 20, Runs: 2}); got != want {
		t.Errorf("b: %+v, want %+v", got, want)
	}
	var buf bytes.Buffer
	if err := s.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var obj map[string]float64
	if err := json.Unmarshal(buf.Bytes(), &obj); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	want := map[string]float64{"a": 2.5, "a_min": 1, "a_max": 10, "b": 15, "b_min": 10, "b_max": 20, "runs": 4}
	if len(obj) != len(want) {
		t.Errorf("JSON %v, want %v", obj, want)
	}
	for k, v := range want {
		if obj[k] != v {
			t.Errorf("JSON %s = %v, want %v", k, obj[k], v)
		}
	}
}

// A ratio is recorded only when both sides were measured and the divisor is positive; NaN is
// never recorded.
func TestFiguresRatio(t *testing.T) {
	f := Figures{}
	f.set("x", nan)
	f.set("a", 3)
	f.set("b", 2)
	f.set("z", 0)
	f.ratio("a_of_b", "a", "b")
	f.ratio("a_of_x", "a", "x")
	f.ratio("a_of_z", "a", "z")
	if len(f) != 4 || f["a_of_b"] != 1.5 {
		t.Errorf("figures %v, want a, b, z and a_of_b = 1.5", f)
	}
}

// The counter tells the benchmark's messages apart by the sequence number in their UUID (one
// bit each), and any other UUID by a map; duplicates count once.
func TestCounterSequenceUUIDs(t *testing.T) {
	e := &env{}
	m1, m2 := e.newMessage(), e.newMessage()
	if _, ok := messageSeq(m1.UUID); !ok {
		t.Fatalf("messageSeq(%q) not recognised", m1.UUID)
	}
	if _, ok := messageSeq("6f1c1f9e-2d2b-4b6a-9c1e-000000000001"); ok {
		t.Error("a foreign UUID was taken for a sequence number")
	}
	c := newCounter(3)
	for _, id := range []string{m1.UUID, m2.UUID, m1.UUID, "foreign", "foreign"} {
		c.add(id)
	}
	select {
	case <-c.done:
	default:
		t.Fatal("counter not done after 3 distinct messages")
	}
	if n, dups := c.counts(); n != 3 || dups != 2 {
		t.Errorf("counts = %d, %d; want 3, 2", n, dups)
	}
	lc := newCounter(0)
	lc.add(m1.UUID)
	if _, ok := lc.receivedAt(m1.UUID); !ok {
		t.Error("a latency counter did not record the arrival")
	}
}
