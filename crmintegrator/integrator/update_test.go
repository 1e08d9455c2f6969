package integrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// startAPI starts fakecrm serving api and a daemon speaking it, checked
// as at start, and dials it.
func startAPI(t *testing.T, api string, faults fakecrm.Faults) (*fakecrm.Server, *Server, *crmrpc.Client) {
	t.Helper()
	crm, url := startCRM(t, fakecrm.Config{API: api, Faults: faults, Seed: 7})
	cfg := testConfig(url)
	cfg.API = api
	s, addr := startDaemon(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	return crm, s, dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
}

// updateRecords are recs (delivered as ids) updated: a new email, the
// first name cleared, a phone set, and for APIs with a company field the
// attribute set on even records and cleared on odd ones.
func updateRecords(recs []crmrpc.Record, ids map[string]string, attrs bool) []crmrpc.Record {
	out := make([]crmrpc.Record, len(recs))
	for i, r := range recs {
		c := r.Contact
		c.Attributes = nil
		c.Email = "new-" + c.Email
		c.FirstName = ""
		c.Phone = fmt.Sprintf("+1 555 %04d", i)
		fields := []string{"email", "first_name", "phone"}
		if attrs {
			fields = append(fields, contact.AttributePrefix+"company")
			if i%2 == 0 {
				c.Attributes = contact.AttrsOf(map[string]string{"company": "Acme " + c.ExternalID})
			}
		}
		out[i] = crmrpc.Record{Contact: c, CRMID: ids[c.ExternalID], Fields: fields}
	}
	return out
}

func createRecords(prefix string, n int) []crmrpc.Record {
	recs := makeRecords(prefix, n)
	for i := range recs {
		recs[i].Contact.LastName = "Lovelace" // Salesforce requires it
		recs[i].Contact.Attributes = contact.AttrsOf(map[string]string{})
	}
	return recs
}

// Updates under 503s, ambiguous answers (500, 502, 504, resets, hangs)
// and latency are resent until they land, never create a contact, and
// leave the new values in the CRM, for each API.
func TestUpdatesUnderFaultsNeverCreate(t *testing.T) {
	for _, tc := range []struct {
		api   string
		attrs bool // the CRM has a company field
	}{
		{"generic", true},
		{"hubspot", true},
		{"salesforce", false},
	} {
		t.Run(tc.api, func(t *testing.T) {
			const n = 60
			crm, _, c := startAPI(t, tc.api, fakecrm.Faults{})
			recs := createRecords("U", n)
			for i := range recs {
				if tc.attrs && i%2 == 1 {
					recs[i].Contact.Attributes = contact.AttrsOf(map[string]string{"company": "Old"})
				}
			}
			ids := deliverAll(t, c, recs, 25, 20*time.Second)
			crm.SetFaults(fakecrm.Faults{FailRate: 0.1, AmbiguousRate: 0.1, AmbiguousModes: "500,502,504,reset,hang",
				Hang: 50 * time.Millisecond, Latency: 20 * time.Millisecond, Jitter: 30 * time.Millisecond})
			before := crm.Audit()
			ups := updateRecords(recs, ids, tc.attrs)
			got := deliverAll(t, c, ups, 25, 40*time.Second)
			crm.SetFaults(fakecrm.Faults{})
			for k, id := range ids {
				if got[k] != id {
					t.Errorf("%s: updated as %q, want its CRM id %q", k, got[k], id)
				}
			}
			a := crm.Audit()
			if a.Contacts != n || a.Creates != before.Creates || a.DuplicateContacts != 0 {
				t.Fatalf("after the updates: %d contacts, %d creates (%d before), %d duplicates; want %d, no new one",
					a.Contacts, a.Creates, before.Creates, a.DuplicateContacts, n)
			}
			if a.Updates < n || a.Failed == 0 || a.Ambiguous == 0 {
				t.Errorf("audit %+v: want at least %d updates and some 503s and ambiguous answers", a, n)
			}
			byKey := map[string]contact.Contact{}
			for _, sc := range crm.Contacts() {
				byKey[sc.ExternalID] = sc.Contact
			}
			for i, u := range ups {
				have := byKey[u.Contact.ExternalID]
				if have.Email != u.Contact.Email || have.FirstName != "" || have.Phone != u.Contact.Phone || have.LastName != "Lovelace" {
					t.Fatalf("%s holds %+v, want email %q, no first name, phone %q, last name kept", u.Contact.ExternalID, have, u.Contact.Email, u.Contact.Phone)
				}
				if tc.attrs {
					want := map[bool]string{true: "Acme " + u.Contact.ExternalID, false: ""}[i%2 == 0]
					if have.Attributes.Map()["company"] != want {
						t.Fatalf("%s company %q, want %q", u.Contact.ExternalID, have.Attributes.Map()["company"], want)
					}
				}
			}
		})
	}
}

// An update of a CRM id the CRM does not hold (deleted there, or never
// its own) is rejected with the CRM's code and a message that says so;
// nothing is created. A block mixing creates and updates gets each its
// verdict, and the two never share a CRM request.
func TestUpdateUnknownIDAndMixedBlock(t *testing.T) {
	for _, tc := range []struct {
		api, unknown, code string
	}{
		{"generic", "ct_09999999", "not_found"},
		{"hubspot", "99999999", "OBJECT_NOT_FOUND"},
		{"salesforce", "003000000009999AAA", "ENTITY_IS_DELETED"},
	} {
		t.Run(tc.api, func(t *testing.T) {
			crm, s, c := startAPI(t, tc.api, fakecrm.Faults{})
			first := createRecords("M", 3)
			ids := deliverAll(t, c, first, 10, 10*time.Second)
			block := createRecords("N", 2) // creates
			upd := updateRecords(first[:2], ids, false)
			gone := crmrpc.Record{Contact: first[2].Contact, CRMID: tc.unknown, Fields: []string{"email"}}
			gone.Contact.Email = "gone@example.com"
			bad := crmrpc.Record{Contact: first[2].Contact, CRMID: ids[first[2].Contact.ExternalID], Fields: []string{"shoe_size"}}
			bad.Contact.ExternalID = "M-bad" // a key of its own: a call sends a key once
			noID := crmrpc.Record{Contact: first[1].Contact, Fields: []string{"email"}}
			noID.Contact.ExternalID = "M-noid"
			if _, err := c.Deliver(context.Background(), []crmrpc.Record{noID}); !isFatal(err, crmrpc.CodeMalformedCall) {
				t.Errorf("an update without a CRM id: %v, want a fatal %s before anything is sent", err, crmrpc.CodeMalformedCall)
			}
			// The daemon refuses it too, should a client send it (gob).
			if vs, err := s.Deliver(context.Background(), []crmrpc.Record{noID}); err != nil || vs[0].Outcome != crmrpc.Rejected || vs[0].Code != CodeUpdateWithoutID {
				t.Errorf("the daemon on an update without a CRM id: %+v %v, want Rejected %s", vs, err, CodeUpdateWithoutID)
			}
			block = append(block, upd[0], gone, upd[1], bad)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			vs, err := c.Deliver(ctx, block)
			if err != nil {
				t.Fatal(err)
			}
			want := []struct {
				outcome crmrpc.Outcome
				crmID   string
				code    string
			}{
				{crmrpc.Delivered, "", ""}, {crmrpc.Delivered, "", ""},
				{crmrpc.Delivered, ids["M-00000"], ""},
				{crmrpc.Rejected, "", tc.code},
				{crmrpc.Delivered, ids["M-00001"], ""},
				{crmrpc.Rejected, "", CodeUnknownField},
			}
			for i, w := range want {
				v := vs[i]
				if v.Outcome != w.outcome || (w.crmID != "" && v.CRMID != w.crmID) || v.Code != w.code {
					t.Errorf("record %d: got %v %q %s %q, want %v %q %s", i, v.Outcome, v.CRMID, v.Code, v.Message, w.outcome, w.crmID, w.code)
				}
			}
			if msg := vs[3].Message; !strings.Contains(msg, "no longer holds contact "+tc.unknown+" for key M-00002") {
				t.Errorf("message %q does not say the CRM lost the contact", msg)
			}
			if a := crm.Audit(); a.Contacts != 5 || a.DuplicateContacts != 0 {
				t.Errorf("audit %+v: want 5 contacts (3 + 2 created), none made by an update", a)
			}
			var buf strings.Builder
			s.met.WriteTo(&buf)
			for _, line := range []string{
				`crmintegrator_update_verdicts_total{outcome="delivered"} 2`,
				`crmintegrator_update_verdicts_total{outcome="rejected"} 2`,
				`crmintegrator_verdicts_total{outcome="delivered"} 7`,
				`op="update"`,
			} {
				if !strings.Contains(buf.String(), line) {
					t.Errorf("metrics lack %s:\n%s", line, buf.String())
				}
			}
		})
	}
}

// An update's CRM id and field names are held to the field limit as its
// fields are: the call is refused before anything is sent.
func TestUpdateFieldLimits(t *testing.T) {
	crm, s, _ := startAPI(t, "generic", fakecrm.Faults{})
	long := strings.Repeat("x", 4097)
	base := crmrpc.Record{Contact: contact.Contact{ExternalID: "K", Email: "k@example.com"}, CRMID: "ct_00000001", Fields: []string{"email"}}
	for _, tc := range []struct {
		name string
		edit func(*crmrpc.Record)
		want string
	}{
		{"crm id", func(r *crmrpc.Record) { r.CRMID = long }, "the crm id has 4097 bytes"},
		{"field name", func(r *crmrpc.Record) { r.Fields = []string{"email", contact.AttributePrefix + long} }, "a field name has 4108 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := base
			tc.edit(&r)
			_, err := s.Deliver(context.Background(), []crmrpc.Record{r})
			if err == nil || err.Code != crmrpc.CodeFieldTooLarge || !strings.Contains(err.Message, tc.want) {
				t.Fatalf("got %v, want %s saying %q", err, crmrpc.CodeFieldTooLarge, tc.want)
			}
		})
	}
	if a := crm.Audit(); a.Requests != 0 {
		t.Errorf("%d CRM requests, want none", a.Requests)
	}
}

func isFatal(err error, code string) bool {
	var e *crmrpc.Error
	return errors.As(err, &e) && e.Code == code && e.Fatal()
}

// HubSpot's 429 for its rolling window carries no Retry-After, only the
// window's headers; a slot frees every interval/max on average. The
// records it refused wait a pause of that order and then the window's
// gate (here its probe, 0.5 s: the 429 said the window was full), inside
// the same call; they are not answered Retry after a second, which sent
// them back to the reader and stretched the tail of an import at the
// quota by a second and the reader's backoff. The window here is 20
// requests in 200 ms (HubSpot's is 10 s: the same arithmetic, slower).
func TestHubSpotWindow429RetriedInCall(t *testing.T) {
	for _, latency := range []time.Duration{0, 80 * time.Millisecond} {
		t.Run(fmt.Sprintf("latency=%v", latency), func(t *testing.T) { testHubSpotWindow429(t, latency) })
	}
}

func testHubSpotWindow429(t *testing.T, latency time.Duration) {
	const interval = 200 * time.Millisecond
	crm, url := startCRM(t, fakecrm.Config{API: fakecrm.APIHubSpot, Faults: fakecrm.Faults{Latency: latency}})
	target, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	window := func(h http.Header, remaining string) {
		// developers.hubspot.com/docs/api/usage-details: the window's
		// headers, and the 429's body below.
		h.Set("X-HubSpot-RateLimit-Interval-Milliseconds", strconv.Itoa(int(interval.Milliseconds())))
		h.Set("X-HubSpot-RateLimit-Max", "20")
		h.Set("X-HubSpot-RateLimit-Remaining", remaining)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error { window(r.Header, "19"); return nil }
	var refuse atomic.Bool
	var writes, refused atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/batch/") {
			writes.Add(1)
			if refuse.CompareAndSwap(true, false) {
				refused.Add(1)
				io.Copy(io.Discard, r.Body)
				window(w.Header(), "0")
				w.Header().Set("Content-Type", "application/json;charset=utf-8")
				w.WriteHeader(http.StatusTooManyRequests)
				io.WriteString(w, `{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId":"c0ffee00-0000-4000-8000-000000000000","policyName":"TEN_SECONDLY_ROLLING","requestId":"c0ffee00-0000-4000-8000-000000000001"}`)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	cfg := testConfig(srv.URL)
	cfg.API = "hubspot"
	_, addr := startDaemon(t, cfg)
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	deliver := func(prefix string) {
		t.Helper()
		vs, err := c.Deliver(context.Background(), createRecords(prefix, 5))
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vs {
			if v.Outcome != crmrpc.Delivered {
				t.Fatalf("%s record %d: %+v, want delivered within the call", prefix, i, v)
			}
		}
	}
	deliver("A") // the daemon learns the window
	// Past the first interval the daemon knows its own requests' share
	// of the window; a 429 then is jitter at its edge.
	time.Sleep(interval)
	refuse.Store(true)
	deliver("B")
	if refused.Load() != 1 || writes.Load() != 3 || crm.Audit().Contacts != 10 {
		t.Fatalf("%d refused, %d writes, %d contacts; want the one 429, one resend, 10 contacts", refused.Load(), writes.Load(), crm.Audit().Contacts)
	}
}
