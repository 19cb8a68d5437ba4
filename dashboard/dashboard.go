// Package dashboard is a web dashboard over the Jasper tables, in the spirit of River UI: an
// http.Handler a service mounts next to its other endpoints (or that the CLI serves with
// `watermill-jasper ui`). It shows the envelopes by status, topic and destination with the
// age of the oldest, a plot of the relay backlog and the handled envelopes over the last
// minutes (sampled in memory while the handler lives), the nodes holding envelopes and
// whether a session holds their lock, and the dead letters, with a filter, a search, a
// detail view, and replay and purge behind a confirmation step.
//
// The pages are rendered on the server with html/template (embedded with go:embed) and use
// no JavaScript. Every read and change goes through the admin package: the dashboard holds no
// SQL.
//
// Security: replay and purge are POST forms that need the Config.Token (compared in constant
// time) and a per-session CSRF token (a form field checked against a SameSite=Strict
// cookie); cross-origin POSTs are also refused by http.CrossOriginProtection. With
// Config.ReadOnly the pages have no such forms and every POST is refused. The handler never
// sees a DSN; errors pass through Config.RedactError before they are shown.
package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/database"
)

//go:embed templates/*.html
var templateFS embed.FS

// csrfCookie names the cookie holding the session's CSRF token.
const csrfCookie = "wj_dashboard_csrf"

// bodyPreview is the most bytes of a dead letter's body the detail view shows.
const bodyPreview = 4096

// Handler serves the dashboard. Build it with NewHandler and Close it when done: it samples
// the row counts in the background while it lives.
type Handler struct {
	db      database.Driver
	cfg     Config
	logger  watermill.LoggerAdapter
	mux     http.Handler
	pages   map[string]*template.Template
	samples *sampler

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// NewHandler returns the dashboard of the tables config.Schema names on db, and starts
// sampling the row counts every config.SampleInterval. logger may be nil.
func NewHandler(db database.Driver, config Config, logger watermill.LoggerAdapter) (*Handler, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil database driver; use database.FromPgx, database.FromStdSQL or sqlserver.FromStdSQL", ErrInvalidConfig)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	if config.Schema.Dialect == "" {
		config.Schema.Dialect = db.Dialect()
	} else if config.Schema.Dialect != db.Dialect() {
		return nil, fmt.Errorf("%w: Schema.Dialect is %s but the database is %s", ErrInvalidConfig, config.Schema.Dialect, db.Dialect())
	}
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, err
	}
	norm, err := config.Schema.Normalized()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	config.Schema = norm
	h := &Handler{
		db: db, cfg: config, logger: logger,
		samples: &sampler{max: int(config.SampleWindow/config.SampleInterval) + 1},
		done:    make(chan struct{}),
	}
	if h.pages, err = parsePages(); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.overview)
	mux.HandleFunc("GET /dead-letters", h.deadLetters)
	mux.HandleFunc("GET /dead-letters/{id}", h.deadLetter)
	mux.HandleFunc("GET /dead-letters/{id}/replay", h.replayConfirm)
	mux.HandleFunc("POST /dead-letters/{id}/replay", h.replay)
	mux.HandleFunc("GET /purge", h.purgeConfirm)
	mux.HandleFunc("POST /purge", h.purge)
	h.mux = http.NewCrossOriginProtection().Handler(mux)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go h.sampleLoop(ctx)
	return h, nil
}

// Close stops the sampling. The handler still serves pages afterwards (with a frozen plot).
func (h *Handler) Close() error {
	h.closeOnce.Do(func() {
		h.cancel()
		<-h.done
	})
	return nil
}

// ServeHTTP serves the dashboard's pages.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cache-Control", "no-store")
	if r.Method == http.MethodPost && h.cfg.ReadOnly {
		http.Error(w, "the dashboard is read-only", http.StatusForbidden)
		return
	}
	h.mux.ServeHTTP(w, r)
}

var funcs = template.FuncMap{
	"fmtTime": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"orDash": func(s string) string {
		if s == "" {
			return "—"
		}
		return s
	},
	"short": func(s string, n int) string {
		s = strings.Join(strings.Fields(s), " ")
		if utf8.RuneCountInString(s) <= n {
			return s
		}
		r := []rune(s)
		return string(r[:n]) + "…"
	},
}

func parsePages() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, p := range []string{"overview", "deadletters", "deadletter", "confirm", "result"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, err
		}
		pages[p] = t
	}
	return pages, nil
}

// page is what every template gets.
type page struct {
	Title    string
	Prefix   string
	Schema   string
	ReadOnly bool
	CSRF     string
	Error    string
	Now      time.Time
	Data     any
}

// render writes the page, setting the CSRF cookie when the session has none.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, name, title string, data any, errs ...error) {
	p := page{Title: title, Prefix: h.cfg.PathPrefix, Schema: h.cfg.Schema.Schema, ReadOnly: h.cfg.ReadOnly, Now: time.Now(), Data: data}
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, h.redact(err))
		}
	}
	p.Error = strings.Join(msgs, "; ")
	if !h.cfg.ReadOnly {
		p.CSRF = h.csrfToken(w, r)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := h.pages[name].Execute(w, p); err != nil {
		h.logger.Error("dashboard: render "+name, err, nil)
	}
}

// redact is the text of err as pages and logs show it.
func (h *Handler) redact(err error) string {
	if h.cfg.RedactError != nil {
		return h.cfg.RedactError(err)
	}
	return err.Error()
}

// csrfToken returns the session's CSRF token, setting the cookie when there is none.
func (h *Handler) csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 64 {
		if _, err := hex.DecodeString(c.Value); err == nil {
			return c.Value
		}
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	v := hex.EncodeToString(b)
	path := h.cfg.PathPrefix
	if path == "" {
		path = "/"
	}
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v, Path: path, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	return v
}

// equal compares two secrets in constant time (also in their length).
func equal(a, b string) bool {
	x, y := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}

// errForbidden is the refusal of a POST without a valid token or CSRF token.
var errForbidden = errors.New("forbidden")

// checkPost verifies the CSRF token (form field against cookie) and the dashboard token of a
// mutation.
func (h *Handler) checkPost(r *http.Request) (string, error) {
	if err := r.ParseForm(); err != nil {
		return "", err
	}
	c, err := r.Cookie(csrfCookie)
	if err != nil || c.Value == "" || !equal(c.Value, r.PostForm.Get("csrf")) {
		return "the form expired or came from another site (CSRF token mismatch): reload the page and try again", errForbidden
	}
	if !equal(h.cfg.Token, r.PostForm.Get("token")) {
		return "wrong token", errForbidden
	}
	return "", nil
}

// overviewData is the overview page.
type overviewData struct {
	Incoming, Outgoing []group
	AgesError          string
	Counts             admin.RowCounts
	Nodes              []node
	Plot               plot
	SampleInterval     string
}

type node struct {
	OwnerID            int32
	State              string
	Incoming, Outgoing int64
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var d overviewData
	c, err := admin.Counts(ctx, h.db, h.cfg.Schema)
	if err != nil {
		h.render(w, r, http.StatusInternalServerError, "overview", "Overview", d, err)
		return
	}
	d.Counts = c
	a, aerr := admin.Ages(ctx, h.db, h.cfg.Schema)
	if aerr != nil {
		d.AgesError = h.redact(aerr)
	}
	d.Incoming, d.Outgoing = groups(a.Incoming), groups(a.Outgoing)
	ids := make([]int32, 0, len(c.Owners))
	for _, o := range c.Owners {
		ids = append(ids, o.OwnerID)
	}
	live, lerr := admin.NodeLiveness(ctx, h.db, ids)
	for _, o := range c.Owners {
		n := node{OwnerID: o.OwnerID, Incoming: o.Incoming, Outgoing: o.Outgoing, State: "no node (any node may claim)"}
		if o.OwnerID != admin.AnyNode {
			n.State = live[o.OwnerID].String()
		}
		d.Nodes = append(d.Nodes, n)
	}
	d.Plot = buildPlot(h.samples.snapshot())
	d.SampleInterval = h.cfg.SampleInterval.String()
	h.render(w, r, http.StatusOK, "overview", "Overview", d, lerr)
}

type listData struct {
	Topic, Query string
	Topics       []string
	Rows         []admin.DeadLetter
	Total        int64
	Limited      bool
}

func (h *Handler) deadLetters(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	d := listData{Topic: r.URL.Query().Get("topic"), Query: strings.TrimSpace(r.URL.Query().Get("q"))}
	all, err := admin.ListDeadLetters(ctx, h.db, h.cfg.Schema, admin.ListOptions{Limit: -1})
	if err != nil {
		h.render(w, r, http.StatusInternalServerError, "deadletters", "Dead letters", d, err)
		return
	}
	seen := map[string]bool{}
	q := strings.ToLower(d.Query)
	for _, dl := range all {
		if !seen[dl.ReceivedAt] {
			seen[dl.ReceivedAt] = true
			d.Topics = append(d.Topics, dl.ReceivedAt)
		}
		if d.Topic != "" && dl.ReceivedAt != d.Topic {
			continue
		}
		if q != "" && !matches(dl, q) {
			continue
		}
		d.Total++
		if h.cfg.ListLimit > 0 && len(d.Rows) >= h.cfg.ListLimit {
			d.Limited = true
			continue
		}
		d.Rows = append(d.Rows, dl)
	}
	sort.Strings(d.Topics)
	h.render(w, r, http.StatusOK, "deadletters", "Dead letters", d)
}

// matches tells whether the search q (lower case) occurs in one of the dead letter's texts.
func matches(d admin.DeadLetter, q string) bool {
	for _, s := range []string{d.ID.String(), d.MessageUUID, d.MessageType, d.Source, d.ReceivedAt, d.Explanation,
		d.ExceptionType, d.ExceptionMessage, d.CorrelationID} {
		if strings.Contains(strings.ToLower(s), q) {
			return true
		}
	}
	return false
}

type detailData struct {
	DL         admin.DeadLetter
	Headers    [][2]string
	Body       string
	BodyBinary bool
	Truncated  bool
}

func (h *Handler) loadDeadLetter(w http.ResponseWriter, r *http.Request) (admin.DeadLetter, bool) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		h.render(w, r, http.StatusBadRequest, "result", "Bad request", resultData{Message: "not a dead letter id"})
		return admin.DeadLetter{}, false
	}
	dl, err := admin.GetDeadLetter(r.Context(), h.db, h.cfg.Schema, id)
	if errors.Is(err, admin.ErrDeadLetterNotFound) {
		h.render(w, r, http.StatusNotFound, "result", "Not found", resultData{Message: "no dead letter " + id.String() + " (replayed or purged?)"})
		return admin.DeadLetter{}, false
	}
	if err != nil {
		h.render(w, r, http.StatusInternalServerError, "result", "Error", resultData{}, err)
		return admin.DeadLetter{}, false
	}
	return dl, true
}

func (h *Handler) deadLetter(w http.ResponseWriter, r *http.Request) {
	dl, ok := h.loadDeadLetter(w, r)
	if !ok {
		return
	}
	d := detailData{DL: dl}
	for k, v := range dl.Headers {
		d.Headers = append(d.Headers, [2]string{k, v})
	}
	sort.Slice(d.Headers, func(i, j int) bool { return d.Headers[i][0] < d.Headers[j][0] })
	body := dl.Body
	if len(body) > bodyPreview {
		body, d.Truncated = body[:bodyPreview], true
	}
	if utf8.Valid(body) {
		d.Body = string(body)
	} else {
		d.BodyBinary = true
		if len(body) > 512 {
			body, d.Truncated = body[:512], true
		}
		d.Body = hex.Dump(body)
	}
	h.render(w, r, http.StatusOK, "deadletter", "Dead letter "+dl.ID.String(), d)
}

// confirmData is the confirmation page of a replay or a purge.
type confirmData struct {
	Action  string // form action, relative to the prefix
	Verb    string
	What    string
	Hidden  [][2]string
	Message string
}

type resultData struct {
	Message string
	Back    string
}

func (h *Handler) replayConfirm(w http.ResponseWriter, r *http.Request) {
	if h.cfg.ReadOnly {
		http.Error(w, "the dashboard is read-only", http.StatusForbidden)
		return
	}
	dl, ok := h.loadDeadLetter(w, r)
	if !ok {
		return
	}
	h.render(w, r, http.StatusOK, "confirm", "Replay dead letter", confirmData{
		Action: "/dead-letters/" + dl.ID.String() + "/replay", Verb: "Replay",
		What: fmt.Sprintf("dead letter %s (%s) back to topic %q as an unowned Incoming envelope; it leaves the dead letters", dl.ID, dl.MessageType, dl.ReceivedAt),
	})
}

func (h *Handler) replay(w http.ResponseWriter, r *http.Request) {
	if msg, err := h.checkPost(r); err != nil {
		h.render(w, r, http.StatusForbidden, "result", "Refused", resultData{Message: "refused: " + msg, Back: "/dead-letters"})
		return
	}
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		h.render(w, r, http.StatusBadRequest, "result", "Bad request", resultData{Message: "not a dead letter id"})
		return
	}
	res, err := admin.ReplayDeadLetters(r.Context(), h.db, h.cfg.Schema, admin.ReplaySelection{IDs: []uuid.UUID{id}}, admin.ReplayOptions{})
	if err != nil {
		h.render(w, r, http.StatusInternalServerError, "result", "Replay failed", resultData{Back: "/dead-letters"}, err)
		return
	}
	msg := fmt.Sprintf("Replayed %d dead letter(s).", res.Replayed)
	for _, s := range res.Skipped {
		msg += fmt.Sprintf(" Skipped %s: %s.", s.ID, s.Reason)
	}
	for _, n := range res.NotFound {
		msg += fmt.Sprintf(" %s is not a dead letter (any more).", n)
	}
	h.logger.Info("dashboard: replayed dead letter", watermill.LogFields{"id": id.String(), "replayed": res.Replayed})
	h.render(w, r, http.StatusOK, "result", "Replayed", resultData{Message: msg, Back: "/dead-letters"})
}

// purgeSelection reads topic and older_than (a Go duration, "" = any age).
func purgeSelection(v url.Values) (string, time.Duration, error) {
	var older time.Duration
	if s := strings.TrimSpace(v.Get("older_than")); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return "", 0, fmt.Errorf("older_than %q is not a duration such as 24h", s)
		}
		older = d
	}
	return v.Get("topic"), older, nil
}

func (h *Handler) purgeConfirm(w http.ResponseWriter, r *http.Request) {
	if h.cfg.ReadOnly {
		http.Error(w, "the dashboard is read-only", http.StatusForbidden)
		return
	}
	topic, older, err := purgeSelection(r.URL.Query())
	if err != nil {
		h.render(w, r, http.StatusBadRequest, "result", "Bad request", resultData{Message: err.Error(), Back: "/dead-letters"})
		return
	}
	n, err := admin.CountDeadLetters(r.Context(), h.db, h.cfg.Schema, topic, older)
	if err != nil {
		h.render(w, r, http.StatusInternalServerError, "result", "Error", resultData{Back: "/dead-letters"}, err)
		return
	}
	what := fmt.Sprintf("%d dead letter(s)", n)
	if topic != "" {
		what += fmt.Sprintf(" of topic %q", topic)
	}
	if older > 0 {
		what += " older than " + older.String()
	}
	h.render(w, r, http.StatusOK, "confirm", "Purge dead letters", confirmData{
		Action: "/purge", Verb: "Purge", What: what + "; they are deleted for good",
		Hidden: [][2]string{{"topic", topic}, {"older_than", r.URL.Query().Get("older_than")}},
	})
}

func (h *Handler) purge(w http.ResponseWriter, r *http.Request) {
	if msg, err := h.checkPost(r); err != nil {
		h.render(w, r, http.StatusForbidden, "result", "Refused", resultData{Message: "refused: " + msg, Back: "/dead-letters"})
		return
	}
	topic, older, err := purgeSelection(r.PostForm)
	if err != nil {
		h.render(w, r, http.StatusBadRequest, "result", "Bad request", resultData{Message: err.Error(), Back: "/dead-letters"})
		return
	}
	n, err := admin.PurgeDeadLetters(r.Context(), h.db, h.cfg.Schema, admin.PurgeOptions{Topic: topic, OlderThan: older})
	if err != nil {
		h.render(w, r, http.StatusInternalServerError, "result", "Purge failed", resultData{Message: fmt.Sprintf("Purged %d before the error.", n), Back: "/dead-letters"}, err)
		return
	}
	h.logger.Info("dashboard: purged dead letters", watermill.LogFields{"topic": topic, "older_than": older.String(), "purged": n})
	h.render(w, r, http.StatusOK, "result", "Purged", resultData{Message: fmt.Sprintf("Purged %d dead letter(s).", n), Back: "/dead-letters"})
}
