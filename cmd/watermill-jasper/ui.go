package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/dashboard"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// uiTokenEnv names the variable holding the default --token.
const uiTokenEnv = "WATERMILL_JASPER_UI_TOKEN"

var uiSpec = spec{
	name:    "ui",
	summary: "serve the web dashboard (counts, relay backlog, nodes, dead letters)",
	description: "Serves the dashboard of package dashboard (docs/dashboard.md) until interrupted: envelopes by status, " +
		"topic and destination with the age of the oldest, the relay backlog over the last minutes, the nodes " +
		"holding envelopes and their locks, and the dead letters with search, detail, replay and purge. Replay and " +
		"purge ask for the token (--token, else $" + uiTokenEnv + "); without one, give --read-only. Listen on a " +
		"loopback address, or put the dashboard behind TLS and your own authentication: the token guards the " +
		"changes, not the reading. The DSN and its password are never shown.",
	examples: []string{
		"ui --listen 127.0.0.1:8080 --schema messaging --read-only",
		"ui --dsn postgres://app@db.internal:5432/app --token \"$(cat /run/secrets/jasper-ui)\"",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		db := newDBFlags(fs)
		listen := fs.String("listen", "127.0.0.1:8080", "`ADDRESS` to serve on (host:port)")
		token := fs.String("token", "", "`SECRET` to type to replay or purge dead letters (default: $"+uiTokenEnv+")")
		readOnly := fs.Bool("read-only", false, "show no replay or purge controls and refuse every change")
		sample := fs.Duration("sample-interval", dashboard.DefaultSampleInterval, "how often to count the rows for the backlog plot")
		check := func() error {
			if *token == "" {
				*token = os.Getenv(uiTokenEnv)
			}
			if *token == "" && !*readOnly {
				return usageErrorf("ui: give --token (or $%s) to allow replay and purge, or --read-only", uiTokenEnv)
			}
			return checks(atLeast100ms("--sample-interval", sample))()
		}
		return db.run(check, func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
			dsn, _ := db.DSN()
			return serveUI(ctx, e, drv, dashboard.Config{
				Schema: cfg, Token: *token, ReadOnly: *readOnly, SampleInterval: *sample,
				RedactError: func(err error) string { return redactError(err, dsn).Error() },
			}, *listen)
		})
	},
}

// serveUI serves the dashboard on listen until ctx ends.
func serveUI(ctx context.Context, e *env, drv database.Driver, cfg dashboard.Config, listen string) error {
	h, err := dashboard.NewHandler(drv, cfg, watermill.NopLogger{})
	if err != nil {
		return err
	}
	defer h.Close()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("ui: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	mode := "replay and purge need the token"
	if cfg.ReadOnly {
		mode = "read-only"
	}
	fmt.Fprintf(e.stdout, "Dashboard of schema %s on http://%s/ (%s); interrupt to stop\n", cfg.Schema.Schema, ln.Addr(), mode)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ui: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("ui: %w", err)
	}
	return nil
}
