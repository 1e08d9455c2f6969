package salesforce

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"crmsync/crmintegrator/crmapi"
)

// The org's daily API allocation. Salesforce counts "all API calls made to
// the org in a 24-hour period" and blocks calls "until usage for the
// preceding 24 hours drops below the limit": a rolling window, with no
// reset time an answer could state. So the connector keeps -crm-reserve of
// it for the org's other integrations, and once below that it reads the
// limits resource again before any other request, at the time it told the
// readers.

// limitInfo reads "Sforce-Limit-Info: api-usage=25/5000", which may carry
// other counters after a semicolon ("api-usage=10018/100000;
// api-bursts=1/750", "…; per-app-api-usage=17/250(appName=…)"); a comma
// is taken as a separator too.
func (c *Connector) limitInfo(h string) {
	for _, part := range strings.FieldsFunc(h, func(r rune) bool { return r == ';' || r == ',' }) {
		v, ok := strings.CutPrefix(strings.TrimSpace(part), "api-usage=")
		if !ok {
			continue
		}
		u, m, _ := strings.Cut(v, "/")
		used, err1 := strconv.Atoi(strings.TrimSpace(u))
		limit, err2 := strconv.Atoi(strings.TrimSpace(m))
		if err1 == nil && err2 == nil && limit > 0 && used >= 0 {
			// Answers of concurrent requests arrive in any order: a header
			// never lowers the usage of the same allocation (the limits
			// resource does, when the 24 hours have rolled on).
			c.usageMu.Lock()
			if u, m := c.Usage(); m == limit && u > used {
				used = u
			}
			c.setUsage(used, limit)
			c.usageMu.Unlock()
		}
		return
	}
}

func (c *Connector) setUsage(used, limit int) {
	c.used.Store(int64(used))
	c.max.Store(int64(limit))
	if c.cfg.Usage != nil {
		c.cfg.Usage(used, limit)
	}
}

// Usage is the org's daily API usage as the last answer said (0, 0: not
// known yet).
func (c *Connector) Usage() (used, limit int) { return int(c.used.Load()), int(c.max.Load()) }

type limitsBody struct {
	DailyAPIRequests struct {
		Max       int `json:"Max"`
		Remaining int `json:"Remaining"`
	} `json:"DailyApiRequests"`
}

// limits reads GET /limits and records DailyApiRequests.
func (c *Connector) limits(ctx context.Context, op string) (limitsBody, error) {
	var b limitsBody
	if err := c.send(ctx, op, http.MethodGet, c.api+"/limits", nil, &b); err != nil {
		return b, err
	}
	if d := b.DailyAPIRequests; d.Max > 0 {
		c.setUsage(max(0, d.Max-d.Remaining), d.Max)
	}
	return b, nil
}

// take books a request against the allocation, or answers ClassQuota
// without sending it: a request goes only while what is left after it, and
// after the others in flight (their answers not yet counted), stays at or
// above the reserve. Once it has refused, the next request first reads the
// limits resource: usage falls as the 24 hours roll on, and only that
// resource says by how much. release is called when the answer is in.
func (c *Connector) take(ctx context.Context) (release func(), err error) {
	if at := c.recheck.Load(); at != 0 {
		if time.Now().UnixNano() < at {
			return nil, c.reserveError()
		}
		if _, err := c.limits(ctx, "limits"); err != nil {
			return nil, err
		}
	}
	for {
		used, limit := c.Usage()
		n := c.inflight.Load()
		if limit > 0 && limit-used-int(n)-1 < c.keep(limit) {
			return nil, c.reserveError()
		}
		if c.inflight.CompareAndSwap(n, n+1) {
			c.recheck.Store(0)
			return func() { c.inflight.Add(-1) }, nil
		}
	}
}

// reserveError is the answer while the reserve is reached.
func (c *Connector) reserveError() *crmapi.Error {
	used, limit := c.Usage()
	return c.quotaError("RESERVE", fmt.Sprintf("the org has %d of its %d daily API requests left, and keeps %g%% of them for its other integrations (-crm-reserve)",
		max(0, limit-used), limit, 100*c.cfg.Reserve))
}

// keep is the number of daily requests the reserve keeps.
func (c *Connector) keep(limit int) int { return int(math.Ceil(c.cfg.Reserve * float64(limit))) }

// quotaError is the daily-quota answer, with when to look again: Salesforce
// says no reset time, so the wait is an estimate, ours: the time the
// rolling window needs to free what the reserve lacks plus 1% of the
// allocation, were the last 24 hours' usage spread evenly, within 1 minute
// and 1 hour. A rerun that comes too early costs one limits read.
func (c *Connector) quotaError(code, msg string) *crmapi.Error {
	used, limit := c.Usage()
	wait := time.Hour
	if limit > 0 && used > 0 {
		need := c.keep(limit) - (limit - used) + limit/100 + 1
		wait = time.Duration(float64(24*time.Hour) * float64(need) / float64(used))
		wait = min(time.Hour, max(time.Minute, wait))
	}
	c.recheck.Store(time.Now().Add(wait).UnixNano())
	return &crmapi.Error{Class: crmapi.ClassQuota, Status: http.StatusForbidden, Code: code,
		Message:    msg + "; Salesforce counts the last 24 hours, so the daemon reads its limits again after " + wait.Round(time.Second).String(),
		RetryAfter: wait}
}
