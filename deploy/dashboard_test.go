package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/crmintegrator/integrator"
	"crmsync/csvreader/importer"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// family is one metric family of a /metrics page, and the samples seen.
type family struct {
	typ     string
	samples map[string][]map[string]string // sample name (name, name_bucket, ...) → label sets
}

// exposition is a /metrics page in the text format, by family name.
type exposition map[string]*family

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? \S+$`)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// parseExposition reads a page into e, refusing a sample whose family was
// never declared by a TYPE line: a histogram's name_bucket, name_sum and
// name_count belong to name, and nothing else is let off.
func parseExposition(t *testing.T, e exposition, page string) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(page))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			if e[name] == nil {
				e[name] = &family{typ: typ, samples: map[string][]map[string]string{}}
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("not a sample line: %q", line)
		}
		f := e.familyOf(m[1])
		if f == nil {
			t.Fatalf("sample %s has no TYPE line for its family", m[1])
		}
		labels := map[string]string{}
		for _, p := range labelPair.FindAllStringSubmatch(m[3], -1) {
			labels[p[1]] = p[2]
		}
		f.samples[m[1]] = append(f.samples[m[1]], labels)
	}
}

// familyOf maps a sample name back to its family.
func (e exposition) familyOf(name string) *family {
	if f := e[name]; f != nil && f.typ != "histogram" && f.typ != "summary" {
		return f
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if f := e[base]; ok && f != nil && (f.typ == "histogram" || suffix != "_bucket" && f.typ == "summary") {
			return f
		}
	}
	return nil
}

func contactsOf(prefix string, n int) []crmrpc.Record {
	recs := make([]crmrpc.Record, n)
	for i := range recs {
		id := fmt.Sprintf("%s-%d", prefix, i)
		recs[i] = crmrpc.Record{Contact: contact.Contact{ExternalID: id, Email: id + "@example.com"}}
	}
	return recs
}

// integratorMetrics runs an integrator.Server against fakecrm as the daemon
// does, delivers records through its RPC port in each of the CRM moods, and
// returns what its side port's /metrics says after.
func integratorMetrics(t *testing.T, crmCfg fakecrm.Config, cfg integrator.Config, moods ...fakecrm.Faults) string {
	t.Helper()
	crm, url := fakecrmtest.Start(t, crmCfg)
	cfg.CRMURL, cfg.CRMToken, cfg.RPCToken = url, crmCfg.Token, "rpc"
	cfg.CRMTimeout, cfg.CallBudget, cfg.BreakerThreshold = 2*time.Second, 2*time.Second, 1000
	srv, err := integrator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := srv.Check(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	side := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		side.Close()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		srv.Close(cctx)
		<-served
	})
	c, err := crmrpc.Dial(ctx, crmrpc.ClientConfig{Addrs: []string{ln.Addr().String()}, Token: "rpc"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, f := range moods {
		crm.SetFaults(f)
		if _, err := c.Deliver(ctx, contactsOf(fmt.Sprintf("m%d", i), 300)); err != nil {
			t.Fatalf("deliver in mood %+v: %v", f, err)
		}
	}
	resp, err := http.Get(side.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// exported is every metric the programs export, with the samples seen
// after some traffic of each kind the dashboard shows.
func exported(t *testing.T) (integ, reader exposition) {
	integ, reader = exposition{}, exposition{}
	// The generic CRM: a calm moment, then down (503: retries inside the
	// daemon, which by default answers them Retry at once: MaxCallWait -1
	// sleeps through every wait), then 429s (the pace cut; silent, so that
	// the daemon learns the rate from 429s rather than pacing under it
	// from the RateLimit fields).
	parseExposition(t, integ, integratorMetrics(t, fakecrm.Config{Token: "crm", Seed: 1}, integrator.Config{MaxCallWait: -1},
		fakecrm.Faults{}, fakecrm.Faults{FailRate: 1}, fakecrm.Faults{Rate: 1, Burst: 1, SilentRate: true}))
	// HubSpot says how much of its daily allocation is left.
	parseExposition(t, integ, integratorMetrics(t, fakecrm.Config{Token: "crm", API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Daily: 1000}},
		integrator.Config{API: "hubspot"}, fakecrm.Faults{}))
	// The reader renders its /metrics from a snapshot of the run (csvreader
	// -http serves exactly this); every field is set, so nothing optional
	// is left out.
	var page strings.Builder
	importer.Snapshot{Rows: 10, Valid: 9, Invalid: 1, Duplicates: 1, Unchanged: 1, Stale: 1, Changed: 1, Created: 5, Updated: 1, RejectedByCRM: 1, Failed: 1,
		Unfinished: 1, Retries: 2, InFlight: 3, RetryQueue: 1, RecoveryBacklog: 2, Lookups: 2, BytesRead: 100, FileSize: 200,
		Elapsed: time.Second}.WriteMetrics(&page)
	parseExposition(t, reader, page.String())
	return integ, reader
}

type panel struct {
	Title      string `json:"title"`
	Type       string `json:"type"`
	Datasource struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a row's
}

func readDashboard(t *testing.T) []panel {
	t.Helper()
	b, err := os.ReadFile("grafana/dashboards/crmsync.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string  `json:"uid"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	var flat []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			flat = append(flat, p)
		}
	}
	walk(d.Panels)
	if d.UID == "" || len(flat) == 0 {
		t.Fatalf("dashboard without a uid or panels")
	}
	return flat
}

// TestDashboardQueriesExportedMetrics: every metric a panel queries is
// exported by the programs under that name, with the labels the query
// matches and groups by, and every value it matches with = seen.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	integ, reader := exported(t)
	uid := provisionedDatasourceUID(t)
	used := map[string]bool{}
	for _, p := range readDashboard(t) {
		if p.Datasource.UID != uid {
			t.Errorf("panel %q: datasource %q, want the provisioned %q", p.Title, p.Datasource.UID, uid)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			q, err := parseQuery(tg.Expr)
			if err != nil {
				t.Errorf("panel %q: %v", p.Title, err)
				continue
			}
			if len(q.selectors) == 0 {
				t.Errorf("panel %q: %q queries no metric", p.Title, tg.Expr)
			}
			labels := map[string]bool{}
			for _, sel := range q.selectors {
				e := integ
				if strings.HasPrefix(sel.name, "csvreader_") {
					e = reader
				} else if !strings.HasPrefix(sel.name, "crmintegrator_") {
					t.Errorf("panel %q: %s is neither csvreader's nor crmintegrator's", p.Title, sel.name)
					continue
				}
				f := e.familyOf(sel.name)
				if f == nil || len(f.samples[sel.name]) == 0 {
					t.Errorf("panel %q: %s is not exported (or never had a sample)", p.Title, sel.name)
					continue
				}
				used[sel.name] = true
				for _, ls := range f.samples[sel.name] {
					for l := range ls {
						labels[l] = true
					}
				}
				for _, m := range sel.matchers {
					if !slices.ContainsFunc(f.samples[sel.name], func(ls map[string]string) bool {
						v, ok := ls[m.label]
						return ok && (m.op != "=" || v == m.value)
					}) {
						t.Errorf("panel %q: no sample of %s has %s%s%q", p.Title, sel.name, m.label, m.op, m.value)
					}
				}
			}
			for _, l := range q.grouping {
				if !labels[l] {
					t.Errorf("panel %q: %q groups by %s, a label none of its metrics has", p.Title, tg.Expr, l)
				}
			}
		}
	}
	// The panels the brief of the dashboard promises.
	for _, name := range []string{"csvreader_rows_read_total", "crmintegrator_verdicts_total", "crmintegrator_retries_total",
		"crmintegrator_crm_requests_total", "crmintegrator_breaker_state", "crmintegrator_crm_quota_remaining",
		"crmintegrator_recovery_backlog", "csvreader_recovery_backlog"} {
		if !used[name] {
			t.Errorf("no panel shows %s", name)
		}
	}
}

// TestScrapeTargetsAreComposeSidePorts: each Prometheus target is a
// docker-compose.yml service serving its side port there.
func TestScrapeTargetsAreComposeSidePorts(t *testing.T) {
	prom, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	targets := regexp.MustCompile(`targets:\s*\["([^"]+)"\]`).FindAllStringSubmatch(string(prom), -1)
	if len(targets) != 2 {
		t.Fatalf("prometheus.yml has %d targets, want crmintegrator's and csvreader's", len(targets))
	}
	compose := composeServices(t)
	for _, m := range targets {
		host, port, _ := strings.Cut(m[1], ":")
		block, ok := compose[host]
		if !ok {
			t.Errorf("target %s: no service %s in docker-compose.yml", m[1], host)
			continue
		}
		if !strings.Contains(block, `"-http", "0.0.0.0:`+port+`"`) {
			t.Errorf("target %s: service %s does not serve -http on 0.0.0.0:%s", m[1], host, port)
		}
	}
	// Grafana finds the dashboards where the provider looks for them.
	prov, err := os.ReadFile("grafana/provisioning/dashboards/crmsync.yml")
	if err != nil {
		t.Fatal(err)
	}
	path := regexp.MustCompile(`path:\s*(\S+)`).FindSubmatch(prov)
	if path == nil || !strings.Contains(compose["grafana"], "./deploy/grafana/dashboards:"+string(path[1])+":ro") {
		t.Errorf("the dashboard provider reads %s, which docker-compose.yml does not mount deploy/grafana/dashboards on", path)
	}
}

// composeServices splits docker-compose.yml into its services' text, by
// name: enough to look for a flag, with no YAML parser in the standard
// library.
func composeServices(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	in, name := false, ""
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case line == "services:":
			in = true
		case in && line != "" && line[0] != ' ' && line[0] != '#':
			in = false
		case in && strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "   ") && strings.HasSuffix(line, ":"):
			name = strings.TrimSuffix(strings.TrimSpace(line), ":")
		case in && name != "":
			out[name] += line + "\n"
		}
	}
	return out
}

func provisionedDatasourceUID(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("grafana/provisioning/datasources/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s+uid:\s*(\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("the provisioned datasource has no uid")
	}
	return string(m[1])
}
