package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// initSecrets runs secrets/init.sh as the secrets service does, under root
// (the volumes' mount points made there) with env, and returns what it
// asked chown to do: "OWNER PATH" lines. chown is a stub, so that the test
// needs no root.
func initSecrets(t *testing.T, root string, env ...string) string {
	t.Helper()
	for _, d := range []string{"secrets", "to/postgres", "to/csvreader", "to/crmintegrator", "to/fakecrm", "to/grafana", "to/reports"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := t.TempDir()
	log := filepath.Join(bin, "chown.log")
	stub := "#!/bin/sh\necho \"$1 ${2#" + root + "/}\" >>" + log + "\n"
	if err := os.WriteFile(filepath.Join(bin, "chown"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "secrets/init.sh")
	cmd.Env = append([]string{"ROOT=" + root, "PATH=" + bin + ":" + os.Getenv("PATH")}, env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("init.sh: %v\n%s", err, out)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readSecret(t *testing.T, root, path string) string {
	t.Helper()
	fi, err := os.Stat(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	// lib/pq ignores a PGPASSFILE that group or others may read.
	if fi.Mode().Perm() != 0o400 {
		t.Errorf("%s: mode %v, want 0400", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

func TestInitSecrets(t *testing.T) {
	root := t.TempDir()
	chowns := initSecrets(t, root)
	// Each program's file, and who owns it: the user the program runs as.
	owners := map[string]string{
		"to/postgres/pg-password":    "999:999",
		"to/csvreader/pgpass":        "65532:65532",
		"to/csvreader/rpc-token":     "65532:65532",
		"to/crmintegrator/crm-token": "65532:65532",
		"to/crmintegrator/rpc-token": "65532:65532",
		"to/fakecrm/crm-token":       "65532:65532",
		"to/grafana/admin-password":  "472:0",
	}
	for path, owner := range owners {
		if !strings.Contains(chowns, owner+" "+path+".new\n") {
			t.Errorf("%s is not given to %s; chown calls:\n%s", path, owner, chowns)
		}
	}
	if !strings.Contains(chowns, "65532:65532 to/reports\n") {
		t.Errorf("the reports volume is not csvreader's; chown calls:\n%s", chowns)
	}
	pg := readSecret(t, root, "to/postgres/pg-password")
	crm := readSecret(t, root, "to/crmintegrator/crm-token")
	rpc := readSecret(t, root, "to/crmintegrator/rpc-token")
	for name, v := range map[string]string{"pg": pg, "crm": crm, "rpc": rpc, "grafana": readSecret(t, root, "to/grafana/admin-password")} {
		if len(v) != 64 || strings.Trim(v, "0123456789abcdef") != "" {
			t.Errorf("%s secret %q: want 64 random hex digits", name, v)
		}
	}
	if pg == crm || crm == rpc {
		t.Errorf("secrets are not drawn one by one: %s %s %s", pg, crm, rpc)
	}
	if got := readSecret(t, root, "to/fakecrm/crm-token"); got != crm {
		t.Errorf("fakecrm's token %q, the integrator's %q: want the same", got, crm)
	}
	if got := readSecret(t, root, "to/csvreader/rpc-token"); got != rpc {
		t.Errorf("csvreader's RPC token %q, the integrator's %q: want the same", got, rpc)
	}
	if got := readSecret(t, root, "to/csvreader/pgpass"); got != "*:*:*:*:"+pg {
		t.Errorf("pgpass %q, want a line for any host with the password", got)
	}

	// Run again: the secrets stay, unless one is given.
	initSecrets(t, root, `POSTGRES_PASSWORD=pa:ss\word`, "RPC_TOKEN=given")
	if got := readSecret(t, root, "to/crmintegrator/crm-token"); got != crm {
		t.Errorf("the CRM token changed from %q to %q on a second run", crm, got)
	}
	if got := readSecret(t, root, "to/csvreader/rpc-token"); got != "given" {
		t.Errorf("csvreader's RPC token %q, want the given one", got)
	}
	if got := readSecret(t, root, "to/postgres/pg-password"); got != `pa:ss\word` {
		t.Errorf("postgres' password %q, want the given one", got)
	}
	if got := readSecret(t, root, "to/csvreader/pgpass"); got != `*:*:*:*:pa\:ss\\word` {
		t.Errorf("pgpass %q, want ':' and '\\' escaped", got)
	}
}
