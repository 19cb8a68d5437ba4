//go:build browser

// The browser test: run with `go test -tags browser ./dashboard/` on a machine with Chromium
// (Debian: apt-get install -y chromium; another binary with $CHROMIUM). It drives the
// dashboard through chromedp and writes the screenshot of docs/dashboard.md.

package dashboard_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/dashboard"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// screenshot is where the overview's screenshot goes (docs/dashboard.md shows it) when
// $WATERMILL_JASPER_UPDATE_SCREENSHOT is set; otherwise the test writes it to its temporary
// directory, so that a run leaves the repository as it was.
const screenshot = "../docs/dashboard.png"

func chromium() string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

func TestDashboardInBrowser(t *testing.T) {
	if _, err := os.Stat(chromium()); err != nil {
		t.Fatalf("no Chromium at %s (%v): apt-get install -y chromium, or set $CHROMIUM", chromium(), err)
	}
	db, sc := testdb.Migrated(t)
	s := seed(t, db, sc)
	h, err := dashboard.NewHandler(db, dashboard.Config{Schema: sc, Token: testToken, SampleInterval: 200 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	srv := httptest.NewServer(h)
	defer srv.Close()

	// A live node: a session holds its lock (Jasper's session advisory lock keyed by the
	// node id) and it owns an outgoing envelope.
	ctx := context.Background()
	out := sc.Qualified(schema.OutgoingTable)
	liveNode := int32(1_000_000 + rand.IntN(1_000_000))
	conn, err := testdb.Pool(t).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1::bigint)`, liveNode); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1::bigint)`, liveNode) //nolint:errcheck
	if _, err := db.Exec(ctx, `INSERT INTO `+out+` (id, owner_id, destination, body, message_type) VALUES ($1, $2, 'rabbitmq://queue/invoices', '{}', 'InvoiceDue')`, uuid.New(), liveNode); err != nil {
		t.Fatal(err)
	}

	// Move the counts while the handler samples, so that the plot has a shape: a burst of
	// outgoing envelopes that the "relay" then drains.
	for i := range 12 {
		if i < 6 {
			for range 4 {
				if _, err := db.Exec(ctx, `INSERT INTO `+out+` (id, owner_id, destination, body, message_type) VALUES ($1, 0, 'rabbitmq://queue/orders', '{}', 'OrderPlaced')`, uuid.New()); err != nil {
					t.Fatal(err)
				}
			}
		} else if _, err := db.Exec(ctx, `DELETE FROM `+out+` WHERE id IN (SELECT id FROM `+out+` WHERE owner_id = 0 AND "timestamp" > now() - interval '1 minute' LIMIT 3)`); err != nil {
			t.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond)
	}

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium()),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	bctx, cancelTimeout := context.WithTimeout(bctx, 60*time.Second)
	defer cancelTimeout()

	// The figures of the overview are the database's.
	if err := chromedp.Do(bctx,
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#outgoing-total")),
	); err != nil {
		t.Fatal(err)
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		return v
	}
	outTotal, inTotal, dlCount := text("#outgoing-total"), text("#incoming-total"), text("#dead-letter-count")
	nodes := text("#nodes")
	for _, want := range []string{fmt.Sprintf("%d\talive", liveNode), "7\tdormant"} {
		if !strings.Contains(nodes, want) {
			t.Errorf("nodes table lacks %q:\n%s", want, nodes)
		}
	}
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100)) // quality 100: PNG (below: JPEG)
	if err != nil {
		t.Fatal(err)
	}
	c, err := admin.Counts(ctx, db, sc)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name, shown string
		want        int64
	}{{"outgoing", outTotal, c.OutgoingTotal()}, {"incoming", inTotal, c.IncomingTotal()}, {"dead letters", dlCount, c.DeadLetters}} {
		if strings.TrimSpace(f.shown) != fmt.Sprint(f.want) {
			t.Errorf("%s: the page shows %q, the database has %d", f.name, f.shown, f.want)
		}
	}
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	if os.Getenv("WATERMILL_JASPER_UPDATE_SCREENSHOT") != "" {
		shot = screenshot
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}

	// Replay a dead letter by clicking through the confirmation.
	if err := chromedp.Do(bctx,
		chromedp.Navigate(srv.URL+"/dead-letters"),
		chromedp.WaitVisible(chromedp.CSS("#dead-letters")),
	); err != nil {
		t.Fatal(err)
	}
	before := text("#total")
	if err := chromedp.Do(bctx,
		chromedp.Click(chromedp.CSS(`tr[data-id="`+s.DeadLetter.String()+`"] a.replay`)),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), testToken),
		chromedp.Click(chromedp.CSS("#confirm-button")),
		chromedp.WaitVisible(chromedp.CSS("#result")),
	); err != nil {
		t.Fatal(err)
	}
	result := text("#result")
	if before != "2" {
		t.Errorf("the list shows %q dead letters, want 2", before)
	}
	if !strings.Contains(result, "Replayed 1 dead letter(s).") {
		t.Errorf("result: %q", result)
	}
	if _, err := admin.GetDeadLetter(ctx, db, sc, s.DeadLetter); !errors.Is(err, admin.ErrDeadLetterNotFound) {
		t.Errorf("still a dead letter after the replay: %v", err)
	}
	rows, err := db.Query(ctx, `SELECT status, owner_id, received_at FROM `+sc.Qualified(sc.IncomingTable())+` WHERE id = $1`, s.DeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if !rows.Next() {
		t.Fatal("the replayed dead letter is not in the incoming table")
	}
	var status, topic string
	var owner int32
	if err := rows.Scan(&status, &owner, &topic); err != nil {
		t.Fatal(err)
	}
	if status != schema.StatusIncoming || owner != admin.AnyNode || topic != "orders" {
		t.Errorf("replayed envelope: status %s, owner %d, topic %s; want Incoming, 0, orders", status, owner, topic)
	}
}
