package admin_test

import (
	"context"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/internal/jasperid"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

func TestNodeLiveness(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			s, err := db.Store(schema.Config{})
			if err != nil {
				t.Fatal(err)
			}
			// A live node holds its session lock on a connection of its own; a negative id
			// is sign-extended as Jasper does (on SQL Server: its decimal applock name).
			live := jasperid.NewNodeID()
			liveNeg := -1 - (jasperid.NewNodeID() & 0x3fffffff)
			dead := jasperid.NewNodeID()
			conn, err := db.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(true)
			for _, id := range []int32{live, liveNeg} {
				if ok, err := s.TryNodeLock(ctx, conn, id); err != nil || !ok {
					t.Fatalf("lock %d: %v %v", id, ok, err)
				}
			}
			res, err := admin.NodeLiveness(ctx, db, []int32{0, live, liveNeg, dead})
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != 3 || res[live] != admin.Alive || res[liveNeg] != admin.Alive || res[dead] != admin.Dormant {
				t.Fatalf("liveness %v (live %d, %d; dead %d)", res, live, liveNeg, dead)
			}
			if res, err := admin.NodeLiveness(ctx, db, nil); err != nil || len(res) != 0 {
				t.Fatalf("no owners: %v, %v", res, err)
			}
			if admin.Alive.String() != "alive" || admin.Dormant.String() != "dormant" || admin.LivenessUnknown.String() != "unknown" {
				t.Error("Liveness names")
			}
		})
	}
}
