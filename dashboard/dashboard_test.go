package dashboard_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/dashboard"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

const testToken = "s3cret-dashboard-token"

// seeded is what seed wrote.
type seeded struct {
	DeadLetter, Binary uuid.UUID
}

// seed writes envelopes and dead letters to the tables of cfg: three outgoing rows (two for
// one destination), two incoming ones (one Handled), a dead letter with headers and a text
// body, and one with a binary body.
func seed(t testing.TB, db database.Driver, cfg schema.Config) seeded {
	t.Helper()
	ctx := context.Background()
	s := seeded{DeadLetter: uuid.New(), Binary: uuid.New()}
	out, in, dlq := cfg.Qualified(schema.OutgoingTable), cfg.Qualified(cfg.IncomingTable()), cfg.Qualified(schema.DeadLetterTable)
	stmts := []struct {
		q    string
		args []any
	}{
		{`INSERT INTO ` + out + ` (id, owner_id, destination, body, message_type, "timestamp") VALUES ($1, 0, 'rabbitmq://queue/orders', '{}', 'OrderPlaced', now() - interval '90 seconds')`, []any{uuid.New()}},
		{`INSERT INTO ` + out + ` (id, owner_id, destination, body, message_type) VALUES ($1, 0, 'rabbitmq://queue/orders', '{}', 'OrderPlaced')`, []any{uuid.New()}},
		{`INSERT INTO ` + out + ` (id, owner_id, destination, body, message_type) VALUES ($1, 7, 'rabbitmq://queue/invoices', '{}', 'InvoiceDue')`, []any{uuid.New()}},
		{`INSERT INTO ` + in + ` (id, status, owner_id, body, message_type, received_at) VALUES ($1, 'Incoming', 0, '{}', 'OrderPlaced', 'orders')`, []any{uuid.New()}},
		{`INSERT INTO ` + in + ` (id, status, owner_id, body, message_type, received_at) VALUES ($1, 'Handled', 0, '{}', 'OrderPlaced', 'orders')`, []any{uuid.New()}},
		{`INSERT INTO ` + dlq + ` (id, attempts, body, correlation_id, message_type, content_type, received_at, source,
  explanation, exception_text, exception_type, exception_message, message_uuid, headers, "timestamp")
VALUES ($1, 3, '{"order":42,"note":"<b>bold</b>"}', 'corr-1', 'OrderPlaced', 'application/json', 'orders', 'place-order',
  'failed 3 times', E'*fmt.wrapError: save: disk full\n*errors.errorString: disk full\nstack line 3',
  '*errors.errorString', 'save: disk full', 'msg-1', '{"tenant":"t1"}', now() - interval '1 hour')`, []any{s.DeadLetter}},
		{`INSERT INTO ` + dlq + ` (id, attempts, body, message_type, received_at, source, explanation, exception_type,
  exception_message, message_uuid, headers)
VALUES ($1, 1, '\x00010203ff', 'Blob', 'blobs', 'store-blob', 'permanent', 'main.badInput', 'bad input', 'msg-2', '{}')`, []any{s.Binary}},
	}
	for _, st := range stmts {
		if _, err := db.Exec(ctx, st.q, st.args...); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// server serves a dashboard of a fresh migrated and seeded schema.
func server(t *testing.T, cfg dashboard.Config) (*httptest.Server, *http.Client, database.Driver, schema.Config, seeded) {
	t.Helper()
	db, sc := testdb.Migrated(t)
	s := seed(t, db, sc)
	cfg.Schema = sc
	h, err := dashboard.NewHandler(db, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	return srv, &http.Client{Jar: jar, Timeout: 10 * time.Second}, db, sc, s
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func post(t *testing.T, c *http.Client, u string, form url.Values, header ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF field in the page:\n%s", page)
	}
	return m[1]
}

func mustContain(t *testing.T, page string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(page, w) {
			t.Errorf("the page lacks %q:\n%s", w, page)
		}
	}
}

// noSecrets checks that no DSN or password is in the page.
func noSecrets(t *testing.T, page string) {
	t.Helper()
	for _, bad := range []string{"postgres://", "postgresql://", "sqlserver://", "password", testToken} {
		if strings.Contains(strings.ToLower(page), strings.ToLower(bad)) && !(bad == "password" && strings.Contains(page, `type="password"`)) {
			t.Errorf("the page shows %q", bad)
		}
	}
}

func TestDashboardOverview(t *testing.T) {
	t.Parallel()
	srv, c, _, sc, _ := server(t, dashboard.Config{Token: testToken, SampleInterval: 100 * time.Millisecond})
	time.Sleep(350 * time.Millisecond) // a few samples for the plot
	code, page := get(t, c, srv.URL+"/")
	if code != http.StatusOK {
		t.Fatalf("status %d:\n%s", code, page)
	}
	mustContain(t, page, "schema <code>"+sc.Schema+"</code>",
		`<td>rabbitmq://queue/orders</td><td class="n">2</td><td>1m3`, // oldest about 90s
		`<td>rabbitmq://queue/invoices</td><td class="n">1</td>`,
		`id="outgoing-total">3<`, `id="incoming-total">2<`, `id="dead-letter-count">2<`,
		"<td>Incoming</td><td>orders</td>", "<td>Handled</td><td>orders</td>",
		"<td>7</td><td>dormant</td>", "<polyline", "Not observable from the database")
	noSecrets(t, page)
}

func TestDashboardDeadLetterListSearchDetail(t *testing.T) {
	t.Parallel()
	srv, c, _, _, s := server(t, dashboard.Config{Token: testToken})
	_, page := get(t, c, srv.URL+"/dead-letters")
	mustContain(t, page, `<span id="total">2</span>`, s.DeadLetter.String(), s.Binary.String(), "save: disk full", "Replay…")
	_, page = get(t, c, srv.URL+"/dead-letters?topic=blobs")
	mustContain(t, page, `<span id="total">1</span>`, s.Binary.String())
	_, page = get(t, c, srv.URL+"/dead-letters?q=DISK+FULL")
	mustContain(t, page, `<span id="total">1</span>`, s.DeadLetter.String())
	if strings.Contains(page, s.Binary.String()) {
		t.Error("the search kept the binary dead letter")
	}
	code, page := get(t, c, srv.URL+"/dead-letters/"+s.DeadLetter.String())
	if code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	mustContain(t, page, "*fmt.wrapError: save: disk full\n*errors.errorString: disk full\nstack line 3",
		"<td>tenant</td><td>t1</td>", `&#34;note&#34;:&#34;&lt;b&gt;bold&lt;/b&gt;&#34;`, "corr-1")
	_, page = get(t, c, srv.URL+"/dead-letters/"+s.Binary.String())
	mustContain(t, page, "binary", "00 01 02 03 ff")
	code, _ = get(t, c, srv.URL+"/dead-letters/"+uuid.NewString())
	if code != http.StatusNotFound {
		t.Errorf("unknown id: status %d, want 404", code)
	}
	code, _ = get(t, c, srv.URL+"/dead-letters/x'%3Bdrop")
	if code != http.StatusBadRequest {
		t.Errorf("bad id: status %d, want 400", code)
	}
}

func TestDashboardReplayNeedsTokenAndCSRF(t *testing.T) {
	t.Parallel()
	srv, c, db, sc, s := server(t, dashboard.Config{Token: testToken})
	replay := srv.URL + "/dead-letters/" + s.DeadLetter.String() + "/replay"
	_, page := get(t, c, replay)
	mustContain(t, page, "Replay dead letter", `name="token"`)
	csrf := csrfOf(t, page)

	refusals := []struct {
		name   string
		form   url.Values
		header []string
	}{
		{"no CSRF token", url.Values{"token": {testToken}}, nil},
		{"wrong CSRF token", url.Values{"token": {testToken}, "csrf": {strings.Repeat("0", 64)}}, nil},
		{"wrong token", url.Values{"token": {"nope"}, "csrf": {csrf}}, nil},
		{"no token", url.Values{"csrf": {csrf}}, nil},
		{"cross-origin", url.Values{"token": {testToken}, "csrf": {csrf}}, []string{"Sec-Fetch-Site", "cross-site"}},
	}
	for _, r := range refusals {
		code, page := post(t, c, replay, r.form, r.header...)
		if code != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403:\n%s", r.name, code, page)
		}
	}
	// Without the session cookie the right CSRF value is refused too.
	code, _ := post(t, &http.Client{}, replay, url.Values{"token": {testToken}, "csrf": {csrf}})
	if code != http.StatusForbidden {
		t.Errorf("no cookie: status %d, want 403", code)
	}
	if _, err := admin.GetDeadLetter(context.Background(), db, sc, s.DeadLetter); err != nil {
		t.Fatalf("a refused replay replayed: %v", err)
	}
	code, _ = get(t, c, srv.URL+"/dead-letters/"+s.DeadLetter.String()+"/replay?token="+testToken)
	if code != http.StatusOK {
		t.Errorf("GET of the confirmation: %d", code)
	}
	if _, err := admin.GetDeadLetter(context.Background(), db, sc, s.DeadLetter); err != nil {
		t.Fatal("a GET replayed")
	}

	code, page = post(t, c, replay, url.Values{"token": {testToken}, "csrf": {csrf}})
	if code != http.StatusOK {
		t.Fatalf("replay: %d\n%s", code, page)
	}
	mustContain(t, page, "Replayed 1 dead letter(s).")
	if _, err := admin.GetDeadLetter(context.Background(), db, sc, s.DeadLetter); !errors.Is(err, admin.ErrDeadLetterNotFound) {
		t.Errorf("still a dead letter after the replay: %v", err)
	}
	counts, err := admin.Counts(context.Background(), db, sc)
	if err != nil {
		t.Fatal(err)
	}
	if got := counts.IncomingStatus(schema.StatusIncoming); got != 2 {
		t.Errorf("incoming rows after the replay: %d, want 2", got)
	}

	// Purge: confirmation, then the POST.
	_, page = get(t, c, srv.URL+"/purge?topic=blobs")
	mustContain(t, page, "1 dead letter(s) of topic &#34;blobs&#34;")
	code, page = post(t, c, srv.URL+"/purge", url.Values{"token": {testToken}, "csrf": {csrfOf(t, page)}, "topic": {"blobs"}})
	if code != http.StatusOK {
		t.Fatalf("purge: %d\n%s", code, page)
	}
	mustContain(t, page, "Purged 1 dead letter(s).")
	if n, _ := admin.CountDeadLetters(context.Background(), db, sc, "", 0); n != 0 {
		t.Errorf("%d dead letters left", n)
	}
}

func TestDashboardReadOnly(t *testing.T) {
	t.Parallel()
	srv, c, db, sc, s := server(t, dashboard.Config{ReadOnly: true})
	for _, p := range []string{"/", "/dead-letters", "/dead-letters/" + s.DeadLetter.String()} {
		code, page := get(t, c, srv.URL+p)
		if code != http.StatusOK {
			t.Fatalf("%s: %d", p, code)
		}
		mustContain(t, page, "read-only")
		for _, bad := range []string{"Replay…", "Purge", "<form method=\"post\"", `name="csrf"`} {
			if strings.Contains(page, bad) {
				t.Errorf("%s shows %q in read-only mode", p, bad)
			}
		}
		noSecrets(t, page)
	}
	for _, p := range []string{"/dead-letters/" + s.DeadLetter.String() + "/replay", "/purge"} {
		if code, _ := get(t, c, srv.URL+p); code != http.StatusForbidden {
			t.Errorf("GET %s: %d, want 403", p, code)
		}
		if code, _ := post(t, c, srv.URL+p, url.Values{"token": {""}}); code != http.StatusForbidden {
			t.Errorf("POST %s: %d, want 403", p, code)
		}
	}
	if n, _ := admin.CountDeadLetters(context.Background(), db, sc, "", 0); n != 2 {
		t.Errorf("%d dead letters, want 2", n)
	}
}

func TestDashboardRedactsErrors(t *testing.T) {
	t.Parallel()
	db := testdb.PgxDriver(t)
	h, err := dashboard.NewHandler(db, dashboard.Config{
		Schema: schema.Config{Schema: "wj_missing_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")}, ReadOnly: true,
		RedactError: func(err error) string { return "redacted: " + strings.ReplaceAll(err.Error(), "wj_missing", "X") },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("status %d", rec.Code)
	}
	mustContain(t, rec.Body.String(), `id="error">redacted: `, "schema migrate")
	noSecrets(t, rec.Body.String())
}

func TestDashboardConfig(t *testing.T) {
	t.Parallel()
	db := testdb.PgxDriver(t)
	for _, c := range []struct {
		name string
		cfg  dashboard.Config
	}{
		{"no token", dashboard.Config{}},
		{"bad schema", dashboard.Config{ReadOnly: true, Schema: schema.Config{Schema: `x"; drop`}}},
		{"short interval", dashboard.Config{ReadOnly: true, SampleInterval: time.Millisecond}},
		{"bad prefix", dashboard.Config{ReadOnly: true, PathPrefix: "jasper"}},
		{"other dialect", dashboard.Config{ReadOnly: true, Schema: schema.Config{Dialect: schema.SQLServer}}},
	} {
		if _, err := dashboard.NewHandler(db, c.cfg, nil); !errors.Is(err, dashboard.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", c.name, err)
		}
	}
	if _, err := dashboard.NewHandler(nil, dashboard.Config{ReadOnly: true}, nil); !errors.Is(err, dashboard.ErrInvalidConfig) {
		t.Errorf("nil driver: %v", err)
	}
}

func TestDashboardPathPrefix(t *testing.T) {
	t.Parallel()
	db, sc := testdb.Migrated(t)
	h, err := dashboard.NewHandler(db, dashboard.Config{Schema: sc, Token: testToken, PathPrefix: "/jasper/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mux := http.NewServeMux()
	mux.Handle("/jasper/", http.StripPrefix("/jasper", h))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	code, page := get(t, http.DefaultClient, srv.URL+"/jasper/")
	if code != http.StatusOK {
		t.Fatalf("%d", code)
	}
	mustContain(t, page, `href="/jasper/dead-letters"`)
	if code, _ := get(t, http.DefaultClient, srv.URL+"/jasper/dead-letters"); code != http.StatusOK {
		t.Errorf("dead letters under the prefix: %d", code)
	}
}
