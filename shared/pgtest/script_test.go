package pgtest

import (
	"context"
	"database/sql"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// scripts/pg must work from any checkout: here one under a folder of mode
// 0700, which the postgres user (the server's owner when the tests run as
// root) cannot enter. The cluster then lives in a private temp folder that
// stop finds again and removes.
func TestScriptFromPrivateFolder(t *testing.T) {
	script, err := filepath.Abs("../../scripts/pg")
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(t.TempDir(), "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(home, "checkout", ".pg", "1")
	pg := func(args ...string) (string, error) {
		cmd := exec.Command(script, args...)
		cmd.Env = append(os.Environ(), "PG_FAST=1")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Logf("scripts/pg %s: %s", strings.Join(args, " "), stderr.String())
		}
		return strings.TrimSpace(string(out)), err
	}
	dsn, err := pg("start", dir)
	if err != nil {
		t.Fatalf("start from a 0700 folder: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			pg("stop", dir)
		}
	})
	d, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var one int
	if err := d.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil || one != 1 {
		t.Fatalf("query the cluster: %v", err)
	}
	d.Close()
	if again, err := pg("dsn", dir); err != nil || again != dsn {
		t.Errorf("dsn: got %q, %v; want the start's", again, err)
	}

	var cluster string
	if os.Getuid() == 0 {
		b, err := os.ReadFile(filepath.Join(dir, "location"))
		if err != nil {
			t.Fatalf("as root, from a folder postgres cannot reach, the cluster must live elsewhere: %v", err)
		}
		cluster = strings.TrimSpace(string(b))
		st, err := os.Stat(cluster)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("the private cluster folder has mode %v, want 0700", st.Mode().Perm())
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid == 0 {
			t.Errorf("the private cluster folder belongs to root, want postgres")
		}
	}
	if _, err := pg("stop", dir); err != nil {
		t.Fatalf("stop: %v", err)
	}
	stopped = true
	for _, p := range []string{dir, cluster} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there after stop (%v)", p, err)
		}
	}
}
