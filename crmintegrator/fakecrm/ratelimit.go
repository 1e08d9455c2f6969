package fakecrm

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"crmsync/crmintegrator/crmapi"
)

// bucket is a token bucket: rate tokens a second, at most burst saved up.
// A rate of 0 lets everything through.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
	policy string // the RateLimit-Policy value; "" when unlimited
	silent bool   // Faults.SilentRate: state nothing
}

// configure sets the limits and refills the bucket when they change, so a
// test that turns a 429 storm off gets a CRM that answers at once.
func (b *bucket) configure(rate float64, burst int, silent bool) {
	if burst <= 0 {
		burst = max(1, int(math.Ceil(rate)))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.silent = silent
	if b.rate == rate && b.burst == float64(burst) {
		return
	}
	b.rate, b.burst, b.tokens, b.last = rate, float64(burst), float64(burst), time.Time{}
	b.policy = policyOf(rate, float64(burst))
}

// refill fills the bucket to the brim.
func (b *bucket) refill() {
	b.mu.Lock()
	b.tokens, b.last = b.burst, time.Time{}
	b.mu.Unlock()
}

// take spends a token at now. When none is left it returns false and the
// whole seconds until one will be (at least 1, as Retry-After wants).
func (b *bucket) take(now time.Time) (ok bool, retryAfter int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rate <= 0 {
		return true, 0
	}
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := (1 - b.tokens) / b.rate
	return false, max(1, int(math.Ceil(wait)))
}

// stateLocked is what the bucket holds at now, without spending: whole
// tokens left, and the time until the next whole one (0 when full).
func (b *bucket) stateLocked(now time.Time) (left int, next time.Duration) {
	tokens := b.tokens
	if !b.last.IsZero() {
		tokens = min(b.burst, tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if tokens >= b.burst || b.rate <= 0 {
		return int(b.burst), 0
	}
	whole := math.Floor(tokens)
	return int(whole), time.Duration((whole + 1 - tokens) / b.rate * float64(time.Second))
}

// setHeaders states the bucket in h with the IETF fields, after the
// request it answers took its token (or was refused one).
func (b *bucket) setHeaders(h http.Header, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.policy == "" || b.silent {
		return
	}
	left, next := b.stateLocked(now)
	h[crmapi.HeaderRateLimitPolicy] = []string{b.policy}
	h[crmapi.HeaderRateLimit] = []string{rateLimitValue(left, next)}
}

// RateLimitPolicyName names the one policy the generic API states in the
// IETF rate-limit fields (docs/crm-api.md, "Rate limits").
const RateLimitPolicyName = "default"

// policyOf is the RateLimit-Policy value describing a bucket exactly: q
// requests per w whole seconds is its refill rate (q/w = rate), and the
// bucket holds q — unless it holds another amount, which crmsync-burst
// then states. w is burst/rate when that is whole, else the shortest whole
// window over which the rate is a whole number of requests (a rate with
// no such window up to an hour is rounded down, never up).
func policyOf(rate, burst float64) string {
	if rate <= 0 {
		return ""
	}
	q, w := 0, 0
	if win := burst / rate; win >= 1 && isWhole(win) && isWhole(burst) {
		q, w = int(burst), int(math.Round(win))
	} else {
		for s := 1; s <= 3600; s++ {
			if isWhole(rate * float64(s)) {
				q, w = int(math.Round(rate*float64(s))), s
				break
			}
		}
		if w == 0 {
			q, w = int(math.Floor(rate*3600)), 3600
		}
	}
	v := `"` + RateLimitPolicyName + `";q=` + strconv.Itoa(q) + ";w=" + strconv.Itoa(w)
	if float64(q) != burst {
		v += ";" + crmapi.ParamBurst + "=" + strconv.Itoa(int(burst))
	}
	return v
}

func isWhole(x float64) bool { return math.Abs(x-math.Round(x)) < 1e-9 }

// rateLimitValue is the RateLimit value for left whole tokens, the next
// one due in next (t is omitted when the bucket is full: no quota is due).
func rateLimitValue(left int, next time.Duration) string {
	v := `"` + RateLimitPolicyName + `";r=` + strconv.Itoa(left)
	if next > 0 {
		v += ";t=" + strconv.Itoa(max(1, int(math.Ceil(next.Seconds()))))
	}
	return v
}
