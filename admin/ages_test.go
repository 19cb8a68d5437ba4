package admin_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/admin"
)

func TestAges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := migrated(t, db)
			a, err := admin.Ages(ctx, db, cfg)
			if err != nil {
				t.Fatalf("ages of empty tables: %v", err)
			}
			if len(a.Incoming)+len(a.Outgoing) != 0 {
				t.Fatalf("empty tables: got %+v", a)
			}
			start := time.Now().Add(-time.Minute)
			fill(t, db, cfg)
			a, err = admin.Ages(ctx, db, cfg)
			if err != nil {
				t.Fatal(err)
			}
			var in, out []string
			for _, g := range a.Incoming {
				in = append(in, fmt.Sprintf("%s/%s:%d", g.Name, g.Topic, g.Rows))
				if g.Oldest == nil || g.Oldest.Before(start) || g.Oldest.After(time.Now().Add(time.Minute)) {
					t.Errorf("incoming %s/%s: oldest %v", g.Name, g.Topic, g.Oldest)
				}
			}
			for _, g := range a.Outgoing {
				out = append(out, fmt.Sprintf("%s:%d", g.Name, g.Rows))
				if g.Oldest == nil || g.Oldest.Before(start) {
					t.Errorf("outgoing %s: oldest %v", g.Name, g.Oldest)
				}
			}
			if got, want := fmt.Sprint(in), "[Incoming/invoices:1 Incoming/orders:2 Scheduled/orders:1]"; got != want {
				t.Errorf("incoming: got %s, want %s", got, want)
			}
			if got, want := fmt.Sprint(out), "[rabbitmq://queue/invoices:1 rabbitmq://queue/orders:2]"; got != want {
				t.Errorf("outgoing: got %s, want %s", got, want)
			}
		})
	}
}
