package salesforce

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"crmsync/crmintegrator/crmapi"
)

// maxQueryURL bounds the length of one query's URL (path and encoded
// SOQL). "In each REST call, the maximum length for the combined URI and
// headers is 16,384 bytes" (a longer URI is answered 414), and SOQL is
// augmented server side, so Salesforce advises staying well below: half
// the limit leaves room for both. A Read whose keys do not fit is split
// into several queries.
const maxQueryURL = 8000

// queryResult is a page of a SOQL query's answer.
type queryResult struct {
	TotalSize      int              `json:"totalSize"`
	Done           bool             `json:"done"`
	NextRecordsURL string           `json:"nextRecordsUrl"`
	Records        []map[string]any `json:"records"`
}

// Read finds the records holding each external id with SOQL, "SELECT Id,
// F FROM O WHERE F IN ('k1', 'k2', …)": one request for the batch where
// the URL allows it, following nextRecordsUrl when the answer has pages.
func (c *Connector) Read(ctx context.Context, ids []string) ([][]string, error) {
	found := make([][]string, len(ids))
	at := map[string][]int{}
	for i, id := range ids {
		k := c.fold(id)
		at[k] = append(at[k], i)
	}
	for lo := 0; lo < len(ids); {
		q, n := c.query(ids[lo:])
		if err := c.readQuery(ctx, q, func(rec map[string]any) error {
			id, _ := rec["Id"].(string)
			v, ok := field(rec, c.cfg.IDField).(string)
			if !ok || id == "" {
				// Never read a record we cannot place as "not found".
				return &crmapi.Error{Class: crmapi.ClassUnexpected, Status: http.StatusOK,
					Message: fmt.Sprintf("salesforce query answered a record without Id or %s", c.cfg.IDField)}
			}
			for _, i := range at[c.fold(v)] {
				found[i] = append(found[i], id)
			}
			return nil
		}); err != nil {
			return nil, err
		}
		lo += n
	}
	return found, nil
}

// fold is the form two values of the id field are equal in: SOQL's IN
// ignores case, and so does the field unless it was made case-sensitive
// (describe's caseSensitive), in which case a match must be exact.
func (c *Connector) fold(v string) string {
	if c.caseSensitive.Load() {
		return v
	}
	return strings.ToLower(v)
}

// query is the SOQL for as many of ids as fit in one URL (at least one),
// and how many it took.
func (c *Connector) query(ids []string) (string, int) {
	head := "SELECT Id, " + c.cfg.IDField + " FROM " + c.cfg.Object + " WHERE " + c.cfg.IDField + " IN ("
	// The URL's length, counted as encoded: ", " is "%2C+", ")" is "%29".
	budget := maxQueryURL - len(c.api) - len("/query?q=") - len(url.QueryEscape(head)) - len("%29")
	var b strings.Builder
	b.WriteString(head)
	n := 0
	for _, id := range ids {
		lit := quote(id)
		cost := len(url.QueryEscape(lit))
		if n > 0 {
			cost += len("%2C+")
			if cost > budget {
				break
			}
			b.WriteString(", ")
		}
		b.WriteString(lit)
		budget -= cost
		n++
	}
	b.WriteString(")")
	return b.String(), n
}

// quote is a SOQL string literal. "Quoted string literals support the
// escape sequences \n \r \t \b \f \" \' \\"; any other character stands for
// itself.
func quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for _, r := range s {
		switch r {
		case '\\':
			b.WriteString(`\\`)
		case '\'':
			b.WriteString(`\'`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// readQuery runs q and calls each for every record of every page.
func (c *Connector) readQuery(ctx context.Context, q string, each func(map[string]any) error) error {
	path := c.api + "/query?q=" + url.QueryEscape(q)
	for pages := 0; ; pages++ {
		var res queryResult
		release, err := c.take(ctx) // every query and page is a call
		if err != nil {
			return err
		}
		err = c.send(ctx, "lookup", http.MethodGet, path, nil, &res)
		release()
		if err != nil {
			return err
		}
		for _, rec := range res.Records {
			if err := each(rec); err != nil {
				return err
			}
		}
		if res.Done {
			return nil
		}
		// "If the initial query returns only part of the results, the end
		// of the response contains a field called nextRecordsUrl", a path
		// from the instance's root.
		if !strings.HasPrefix(res.NextRecordsURL, c.api+"/query/") || pages > 1000 {
			return &crmapi.Error{Class: crmapi.ClassUnexpected, Status: http.StatusOK,
				Message: fmt.Sprintf("salesforce query answered done false with nextRecordsUrl %q", res.NextRecordsURL)}
		}
		path = res.NextRecordsURL
	}
}

// field is rec's value of the field name, which Salesforce spells as
// describe does whatever case the query used.
func field(rec map[string]any, name string) any {
	if v, ok := rec[name]; ok {
		return v
	}
	for k, v := range rec {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return nil
}
