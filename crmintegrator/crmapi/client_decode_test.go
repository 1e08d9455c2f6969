package crmapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"testing"
	"time"
)

// TestCreateBatchDecodesLikeJSONDecoder sends raw 200 answers and holds the
// client to what json.NewDecoder(resp.Body).Decode made of them before the
// fast parser: the same results, or the same "unreadable answer" error.
func TestCreateBatchDecodesLikeJSONDecoder(t *testing.T) {
	const good = `{"results":[{"external_id":"a","status":"created","id":"ct_1"},{"external_id":"b","status":"rejected","error":{"code":"invalid_email","message":"email \u0022x\u0022"}}]}` + "\n"
	sized := func(body string) string {
		return "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	}
	chunked := func(body string) string {
		return "Transfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(body)), 16) + "\r\n" + body + "\r\n0\r\n\r\n"
	}
	tests := []struct {
		name    string
		raw     string // the answer after the status line
		body    string // what the body yields
		bodyErr error  // and the error it ends with
	}{
		{"sized", sized(good), good, io.EOF},
		{"chunked", chunked(good), good, io.EOF},
		{"folded field names", sized(`{"Results":[{"External_ID":"a","STATUS":"created"}]}`), `{"Results":[{"External_ID":"a","STATUS":"created"}]}`, io.EOF},
		{"unknown field", sized(`{"results":[{"status":"created","extra":[1,2]}]}`), `{"results":[{"status":"created","extra":[1,2]}]}`, io.EOF},
		{"trailing data", sized(`{"results":[]} and then some`), `{"results":[]} and then some`, io.EOF},
		{"error null", sized(`{"results":[{"status":"created","error":null}]}`), `{"results":[{"status":"created","error":null}]}`, io.EOF},
		{"wrong type", sized(`{"results":[{"status":1}]}`), `{"results":[{"status":1}]}`, io.EOF},
		{"empty", sized(""), "", io.EOF},
		{"not JSON", sized("<html>ok</html>"), "<html>ok</html>", io.EOF},
		{"cut short", "Content-Length: 500\r\n\r\n" + good[:40], good[:40], io.ErrUnexpectedEOF},
		{"whole value, cut short after", "Content-Length: 500\r\n\r\n" + good, good, io.ErrUnexpectedEOF},
		{"chunked cut short", "Transfer-Encoding: chunked\r\n\r\n100\r\n" + good[:40], good[:40], io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body) //nolint:errcheck
				conn, _, err := w.(http.Hijacker).Hijack()
				if err != nil {
					return
				}
				defer conn.Close()
				io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"+tc.raw) //nolint:errcheck
			}))
			defer srv.Close()
			var want BatchResponse
			wantErr := json.NewDecoder(io.MultiReader(bytes.NewReader([]byte(tc.body)), errReader{tc.bodyErr})).Decode(&want)

			c, err := NewClient(srv.URL, "tok", 2*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := c.CreateBatch(context.Background(), []byte(`{"contacts":[]}`), "k")
			if wantErr != nil {
				var e *Error
				if !errors.As(err, &e) || e.Class != ClassAmbiguous || e.Message != "unreadable answer: "+wantErr.Error() {
					t.Fatalf("got error %v, want ambiguous %q", err, "unreadable answer: "+wantErr.Error())
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("got %#v, want %#v", *got, want)
			}
		})
	}
}
