package dashboard_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/dashboard"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// A service mounts the dashboard under a path of its own mux. Replay and purge need the token;
// set ReadOnly instead to show no controls at all.
func ExampleNewHandler() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.ExampleDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	db := database.FromPgx(pool)
	cfg, drop := testdb.ExampleSchema(ctx, db) // an application has migrated its schema already
	defer drop()

	ui, err := dashboard.NewHandler(db, dashboard.Config{
		Schema:     cfg,
		Token:      "from-a-secret-store",
		PathPrefix: "/jasper",
	}, watermill.NewStdLogger(false, false))
	if err != nil {
		log.Fatal(err)
	}
	defer ui.Close()

	mux := http.NewServeMux()
	mux.Handle("/jasper/", http.StripPrefix("/jasper", ui))

	// In a service: http.ListenAndServe("127.0.0.1:8080", mux). Here, one request.
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/jasper/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, strings.Contains(string(page), `id="dead-letter-count">0<`))
	// Output: 200 true
}
