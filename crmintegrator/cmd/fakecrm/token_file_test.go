package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"crmsync/crmintegrator/crmapi"
)

// TestTokenFile: the token read from a file (as docker-compose.yml gives
// it, a line break at the end) wins over FAKECRM_TOKEN.
func TestTokenFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, done, _ := startRun(t, ctx, []string{"-listen", "127.0.0.1:0"}, map[string]string{
		"FAKECRM_TOKEN": "from-env", "FAKECRM_TOKEN_FILE": file,
	})
	if got := post(t, base+crmapi.PathContacts, adaJSON, "Authorization", "Bearer from-env"); got != 401 {
		t.Errorf("with the environment's token: got %d, want 401", got)
	}
	if got := post(t, base+crmapi.PathContacts, adaJSON, "Authorization", "Bearer from-file"); got != 201 {
		t.Errorf("with the file's token: got %d, want 201", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestTokenFileRefused(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"missing", filepath.Join(t.TempDir(), "nope"), "read token file"},
		{"empty", empty, "is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-token-file", tc.file}, envOf(nil), &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error about %q", err, tc.want)
			}
		})
	}
}
