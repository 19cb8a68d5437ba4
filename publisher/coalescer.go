package publisher

import (
	"sync"
	"sync/atomic"
	"time"
)

// Coalescer holds, per notification channel and topic, the time of the last notifying
// publish, so that publishers created per transaction notify at most once per
// Config.NotifyInterval together (Config.Notify, NotifyCoalesced). The zero value is ready to
// use; it is safe for concurrent use. Share one between the publishers of a database
// (Config.Coalescer); a Runtime owns one for the publishers it hands out.
type Coalescer struct {
	last sync.Map // channel "\x00" topic -> *atomic.Int64 (unix nanos)
}

// allow reports whether a publish on key at now may notify, given the least interval between
// two notifying publishes, and records it when it may.
func (c *Coalescer) allow(key string, now time.Time, interval time.Duration) bool {
	v, ok := c.last.Load(key)
	if !ok {
		v, _ = c.last.LoadOrStore(key, new(atomic.Int64))
	}
	last := v.(*atomic.Int64)
	t := now.UnixNano()
	prev := last.Load()
	return t-prev >= int64(interval) && last.CompareAndSwap(prev, t)
}
