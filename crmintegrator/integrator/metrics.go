package integrator

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crmsync/shared/crmrpc"
)

// metrics holds the daemon's counters and writes them in the Prometheus
// text exposition format. Updates are per request or per call, never per
// record, except for the atomic verdict counters.
type metrics struct {
	mu          sync.Mutex
	crmRequests map[[2]string]int64 // {op, status code or "error"}
	rpcCalls    map[[2]string]int64 // {method, "ok" or error code}
	retries     map[string]int64    // internal retries by reason
	latency     histogram

	verdicts        [4]atomic.Int64 // by crmrpc.Outcome
	updates         [4]atomic.Int64 // the verdicts of updates among them, by crmrpc.Outcome
	recordsReceived atomic.Int64
	inflight        atomic.Int64
	rateCuts        atomic.Int64
	backlog         atomic.Int64 // MaybeSent records of live calls awaiting resolution
	lookups         atomic.Int64 // external ids looked up
	lookupsSaved    atomic.Int64 // MaybeSent records settled from what the daemon knew
	overlapping     atomic.Int64 // records that arrived while another call held them
	quotaLeft       atomic.Int64 // the CRM's daily allocation left, as it last said (-1: unknown)
	quotaMax        atomic.Int64
	quotaUntil      atomic.Int64 // unix seconds until which the daily allocation is spent; 0: not

	breakerState func() BreakerState
	rate         func() float64
}

var latencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

type histogram struct {
	counts []int64 // per bucket, not cumulative; last is +Inf
	sum    float64
	n      int64
}

func newMetrics() *metrics {
	return &metrics{
		crmRequests: map[[2]string]int64{},
		rpcCalls:    map[[2]string]int64{},
		retries:     map[string]int64{},
		latency:     histogram{counts: make([]int64, len(latencyBuckets)+1)},
	}
}

func (m *metrics) observeCRM(op string, status int, d time.Duration) {
	code := "error"
	if status > 0 {
		code = strconv.Itoa(status)
	}
	s := d.Seconds()
	i, _ := slices.BinarySearch(latencyBuckets, s)
	m.mu.Lock()
	m.crmRequests[[2]string{op, code}]++
	m.latency.counts[i]++
	m.latency.sum += s
	m.latency.n++
	m.mu.Unlock()
}

func (m *metrics) rpcCall(method, result string) {
	m.mu.Lock()
	m.rpcCalls[[2]string{method, result}]++
	m.mu.Unlock()
}

func (m *metrics) retry(reason string) {
	m.mu.Lock()
	m.retries[reason]++
	m.mu.Unlock()
}

// countVerdicts counts the verdicts of a call's records, and those of
// its updates again on their own.
func (m *metrics) countVerdicts(recs []crmrpc.Record, vs []crmrpc.Verdict) {
	var n, u [4]int64
	for i := range vs {
		if o := vs[i].Outcome; int(o) < len(n) {
			n[o]++
			if recs[i].IsUpdate() {
				u[o]++
			}
		}
	}
	for o := range n {
		if n[o] > 0 {
			m.verdicts[o].Add(n[o])
		}
		if u[o] > 0 {
			m.updates[o].Add(u[o])
		}
	}
}

// WriteTo writes every metric in the text exposition format, version 0.0.4.
func (m *metrics) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	p := func(format string, a ...any) { fmt.Fprintf(cw, format, a...) }
	m.mu.Lock()
	crm := sortedPairs(m.crmRequests)
	rpcs := sortedPairs(m.rpcCalls)
	retries := make([]string, 0, len(m.retries))
	for k := range m.retries {
		retries = append(retries, k)
	}
	slices.Sort(retries)
	retryN := make([]int64, len(retries))
	for i, k := range retries {
		retryN[i] = m.retries[k]
	}
	h := histogram{counts: slices.Clone(m.latency.counts), sum: m.latency.sum, n: m.latency.n}
	m.mu.Unlock()

	p("# HELP crmintegrator_crm_requests_total Requests sent to the CRM by operation and HTTP status (\"error\": no answer).\n")
	p("# TYPE crmintegrator_crm_requests_total counter\n")
	for _, kv := range crm {
		p("crmintegrator_crm_requests_total{op=\"%s\",code=\"%s\"} %d\n", labelValue(kv.k[0]), labelValue(kv.k[1]), kv.v)
	}
	p("# HELP crmintegrator_crm_request_duration_seconds Latency of requests to the CRM.\n")
	p("# TYPE crmintegrator_crm_request_duration_seconds histogram\n")
	var cum int64
	for i, le := range latencyBuckets {
		cum += h.counts[i]
		p("crmintegrator_crm_request_duration_seconds_bucket{le=\"%s\"} %d\n", strconv.FormatFloat(le, 'g', -1, 64), cum)
	}
	cum += h.counts[len(latencyBuckets)]
	p("crmintegrator_crm_request_duration_seconds_bucket{le=\"+Inf\"} %d\n", cum)
	p("crmintegrator_crm_request_duration_seconds_sum %s\n", strconv.FormatFloat(h.sum, 'g', -1, 64))
	p("crmintegrator_crm_request_duration_seconds_count %d\n", h.n)

	p("# HELP crmintegrator_crm_inflight Requests to the CRM in flight.\n")
	p("# TYPE crmintegrator_crm_inflight gauge\n")
	p("crmintegrator_crm_inflight %d\n", m.inflight.Load())
	p("# HELP crmintegrator_breaker_state Circuit breaker state: 0 closed, 1 open, 2 half-open.\n")
	p("# TYPE crmintegrator_breaker_state gauge\n")
	p("crmintegrator_breaker_state %d\n", m.breakerState())
	p("# HELP crmintegrator_crm_rate_limit Current pace of CRM requests per second (0: unlimited).\n")
	p("# TYPE crmintegrator_crm_rate_limit gauge\n")
	p("crmintegrator_crm_rate_limit %s\n", strconv.FormatFloat(roundRate(m.rate()), 'g', -1, 64))
	p("# HELP crmintegrator_crm_rate_cuts_total Times a 429 cut the pace.\n")
	p("# TYPE crmintegrator_crm_rate_cuts_total counter\n")
	p("crmintegrator_crm_rate_cuts_total %d\n", m.rateCuts.Load())

	p("# HELP crmintegrator_verdicts_total Verdicts answered, by outcome.\n")
	p("# TYPE crmintegrator_verdicts_total counter\n")
	for _, o := range []crmrpc.Outcome{crmrpc.Delivered, crmrpc.Retry, crmrpc.Rejected} {
		p("crmintegrator_verdicts_total{outcome=\"%s\"} %d\n", labelValue(o.String()), m.verdicts[o].Load())
	}
	p("# HELP crmintegrator_update_verdicts_total Verdicts answered for update records (counted in crmintegrator_verdicts_total too), by outcome.\n")
	p("# TYPE crmintegrator_update_verdicts_total counter\n")
	for _, o := range []crmrpc.Outcome{crmrpc.Delivered, crmrpc.Retry, crmrpc.Rejected} {
		p("crmintegrator_update_verdicts_total{outcome=\"%s\"} %d\n", labelValue(o.String()), m.updates[o].Load())
	}
	p("# HELP crmintegrator_retries_total Retries inside the daemon, by reason.\n")
	p("# TYPE crmintegrator_retries_total counter\n")
	for i, k := range retries {
		p("crmintegrator_retries_total{reason=\"%s\"} %d\n", labelValue(k), retryN[i])
	}
	p("# HELP crmintegrator_rpc_calls_total RPC calls by method and result.\n")
	p("# TYPE crmintegrator_rpc_calls_total counter\n")
	for _, kv := range rpcs {
		p("crmintegrator_rpc_calls_total{method=\"%s\",result=\"%s\"} %d\n", labelValue(kv.k[0]), labelValue(kv.k[1]), kv.v)
	}
	one := func(name, typ, help string, v int64) {
		p("# HELP %s %s\n# TYPE %s %s\n%s %d\n", name, help, name, typ, name, v)
	}
	one("crmintegrator_recovery_backlog", "gauge", "Records sent with MaybeSent that live calls have not resolved yet.", m.backlog.Load())
	one("crmintegrator_lookups_total", "counter", "External ids looked up in the CRM to resolve records that may exist.", m.lookups.Load())
	one("crmintegrator_lookups_saved_total", "counter", "Records that may exist settled without a lookup, from the CRM's earlier answers.", m.lookupsSaved.Load())
	one("crmintegrator_overlapping_records_total", "counter", "Records that arrived while another call of this daemon held them (answered retry).", m.overlapping.Load())
	if m.quotaMax.Load() > 0 {
		one("crmintegrator_crm_quota_remaining", "gauge", "The CRM's daily request allocation left, as its last answer said.", m.quotaLeft.Load())
		one("crmintegrator_crm_quota_limit", "gauge", "The CRM's daily request allocation.", m.quotaMax.Load())
	}
	one("crmintegrator_crm_quota_exhausted_until", "gauge", "Unix time until which the CRM's daily allocation is spent (0: it is not).", m.quotaUntil.Load())
	p("# HELP crmintegrator_records_received_total Records received in authorised Deliver calls.\n")
	p("# TYPE crmintegrator_records_received_total counter\n")
	p("crmintegrator_records_received_total %d\n", m.recordsReceived.Load())
	return cw.n, cw.err
}

// labelValue escapes a label value as the text exposition format says:
// backslash, double quote and line feed, and nothing else (Go's %q would
// also escape tabs and non-ASCII, which Prometheus then reads literally).
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func labelValue(v string) string { return labelEscaper.Replace(v) }

func roundRate(r float64) float64 { return math.Round(r*100) / 100 }

type pair struct {
	k [2]string
	v int64
}

func sortedPairs(m map[[2]string]int64) []pair {
	out := make([]pair, 0, len(m))
	for k, v := range m {
		out = append(out, pair{k, v})
	}
	slices.SortFunc(out, func(a, b pair) int {
		if c := cmp.Compare(a.k[0], b.k[0]); c != 0 {
			return c
		}
		return cmp.Compare(a.k[1], b.k[1])
	})
	return out
}

type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}
