package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// TestUIServesWithoutSecrets runs `ui` in process with a DSN holding a password (the test
// database trusts local connections, so any password is accepted), reads the pages, checks
// that neither the DSN nor the password nor the token is in them, and stops it.
func TestUIServesWithoutSecrets(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	assertSuccess(t, db(t, "", s, "schema", "migrate"))
	seedDeadLetters(t, s)
	u, err := url.Parse(testDSN())
	if err != nil {
		t.Fatal(err)
	}
	const password, token = "pw-Zq81x", "tok-Hy62k"
	u.User = url.UserPassword(u.User.Username(), password)
	dsn := u.String()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"ui", "--listen", "127.0.0.1:0", "--dsn", dsn, "--schema", s, "--token", token},
			&env{stdin: strings.NewReader(""), stdout: pw, stderr: pw})
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no first line: %v", err)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	m := regexp.MustCompile(`http://(\S+)/`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no address in %q", line)
	}
	for _, p := range []string{"/", "/dead-letters"} {
		resp, err := http.Get("http://" + m[1] + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page := string(b)
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, "schema <code>"+s+"</code>") {
			t.Fatalf("%s: %d\n%s", p, resp.StatusCode, page)
		}
		for _, bad := range []string{password, token, "postgres://", u.Host} {
			if strings.Contains(page, bad) || strings.Contains(line, bad) {
				t.Errorf("%s shows %q", p, bad)
			}
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit status %d after the interrupt", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ui did not stop")
	}
}

func TestUINeedsTokenOrReadOnly(t *testing.T) {
	t.Parallel()
	assertFailure(t, cli(t, "", nil, "ui", "--dsn", testDSN()), 2, "--token", uiTokenEnv, "--read-only")
}
