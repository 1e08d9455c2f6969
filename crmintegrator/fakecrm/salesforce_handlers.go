package fakecrm

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// sfSaveResult is a SaveResult (create) or an UpsertResult (upsert, with
// created). Failures carry neither id nor created, as in the collections
// pages' examples.
type sfSaveResult struct {
	ID      string          `json:"id,omitempty"`
	Success bool            `json:"success"`
	Errors  []sfRecordError `json:"errors"`
	Created *bool           `json:"created,omitempty"`
}

func saveResults(res []sfResult, upsert bool) []sfSaveResult {
	out := make([]sfSaveResult, len(res))
	for i, r := range res {
		if len(r.errs) > 0 {
			out[i] = sfSaveResult{Errors: r.errs}
			continue
		}
		out[i] = sfSaveResult{ID: r.id, Success: true, Errors: []sfRecordError{}}
		if upsert {
			out[i].Created = &r.created
		}
	}
	return out
}

// objectIs reports whether the path names the object served; Salesforce's
// API names are not case-sensitive.
func (sf *salesforce) objectIs(name string) bool { return strings.EqualFold(name, sf.object) }

// sfRecordsRequest is the body of the collections create and upsert.
type sfRecordsRequest struct {
	AllOrNone bool                         `json:"allOrNone"`
	Records   []map[string]json.RawMessage `json:"records"`
}

// sfRecordIn is one decoded input record: its fields by describe name.
type sfRecordIn struct {
	typ    string
	fields map[string]*string
	cased  map[string]string // describe name → the name as sent
}

// decodeRecord reads one record's fields. A field the object lacks fails
// the whole request, as any JSON that does not deserialise into the sObject
// does: that is a 400, not a per-record error.
func (sf *salesforce) decodeRecord(raw map[string]json.RawMessage) (sfRecordIn, int, []byte) {
	in := sfRecordIn{fields: map[string]*string{}, cased: map[string]string{}}
	names := make([]string, 0, len(raw))
	for k := range raw {
		names = append(names, k)
	}
	slices.Sort(names) // a stable first error
	for _, k := range names {
		v := raw[k]
		if k == "attributes" {
			var a struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(v, &a) != nil {
				return in, http.StatusBadRequest, sfErrorBody("JSON_PARSER_ERROR", "attributes must be a map with a type")
			}
			in.typ = a.Type
			continue
		}
		f := sf.field(k)
		if f == nil {
			return in, http.StatusBadRequest, sfErrorBody("INVALID_FIELD", "No such column '"+k+"' on sobject of type "+sf.object)
		}
		s, ok := sfScalar(v)
		if !ok {
			return in, http.StatusBadRequest, sfErrorBody("JSON_PARSER_ERROR", "Cannot deserialize instance of "+f.typ+" from "+firstToken(v)+" value for field "+f.name)
		}
		in.fields[f.name], in.cased[f.name] = s, k
	}
	return in, 0, nil
}

// sfScalar turns a JSON scalar into a field value: nil for null.
func sfScalar(v json.RawMessage) (*string, bool) {
	v = bytes.TrimSpace(v)
	switch {
	case len(v) == 0:
		return nil, false
	case string(v) == "null":
		return nil, true
	case v[0] == '"':
		var s string
		if json.Unmarshal(v, &s) != nil {
			return nil, false
		}
		return &s, true
	case string(v) == "true" || string(v) == "false" || v[0] == '-' || v[0] >= '0' && v[0] <= '9':
		s := string(v)
		return &s, true
	}
	return nil, false
}

func firstToken(v json.RawMessage) string {
	v = bytes.TrimSpace(v)
	if len(v) > 0 && (v[0] == '{' || v[0] == '[') {
		return map[byte]string{'{': "START_OBJECT", '[': "START_ARRAY"}[v[0]]
	}
	return "VALUE"
}

// validate returns a record's per-record errors that need no store: read-
// only fields, lengths, the email's shape and blocked domains.
func (sf *salesforce) validate(in sfRecordIn, f *faultState, create bool) []sfRecordError {
	var errs []sfRecordError
	names := make([]string, 0, len(in.fields))
	for k := range in.fields {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, name := range names {
		fd := sf.field(name)
		p := in.fields[name]
		switch {
		case name == "Id" && create:
			errs = append(errs, sfRecordError{StatusCode: "INVALID_FIELD_FOR_INSERT_UPDATE", Message: "cannot specify Id in an insert call", Fields: []string{"Id"}})
			continue
		case fd.readOnly:
			errs = append(errs, sfRecordError{StatusCode: "INVALID_FIELD_FOR_INSERT_UPDATE",
				Message: "Unable to create/update fields: " + name + ". Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
				Fields:  []string{name}})
			continue
		case p == nil:
			continue
		}
		v := *p
		if n := utf8.RuneCountInString(v); fd.length > 0 && n > fd.length {
			errs = append(errs, sfRecordError{StatusCode: "STRING_TOO_LONG",
				Message: fd.label + ": data value too large: " + v + " (max length=" + strconv.Itoa(fd.length) + ")", Fields: []string{name}})
			continue
		}
		if fd.typ == "email" && v != "" {
			if !validEmail(v) {
				errs = append(errs, sfRecordError{StatusCode: "INVALID_EMAIL_ADDRESS", Message: "Email: invalid email address: " + v, Fields: []string{name}})
				continue
			}
			if pr := f.blockedProblem(&contact.Contact{Email: v}); pr != nil {
				errs = append(errs, sfRecordError{StatusCode: "FIELD_CUSTOM_VALIDATION_EXCEPTION", Message: pr.Message, Fields: []string{}})
			}
		}
	}
	return errs
}

// salesforceWriteMany answers the collections create (POST
// /composite/sobjects), update (PATCH /composite/sobjects, each record
// naming its Id) and upsert (PATCH /composite/sobjects/{object}/{field}):
// 200 with one result per record, in order, unless the request
// as a whole is malformed (400).
func (s *Server) salesforceWriteMany(c *sfCall, body []byte) (int, []byte) {
	sf := s.sf
	upsert := c.rt.e == sfUpsertMany
	if upsert {
		if !sf.objectIs(c.rt.object) {
			return http.StatusNotFound, sfErrorBody("NOT_FOUND", sfNotFound)
		}
		if st, b := sf.checkExternal(c.rt.field, true); st != 0 {
			return st, b
		}
	}
	var req sfRecordsRequest
	if st, b, ok := decodeSF(body, &req); !ok {
		return st, b
	}
	if len(req.Records) > SalesforceMaxRecords {
		return http.StatusBadRequest, sfErrorBody("EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call")
	}
	ins := make([]sfRecordIn, len(req.Records))
	for i, raw := range req.Records {
		in, st, b := sf.decodeRecord(raw)
		if st != 0 {
			return st, b
		}
		switch {
		case in.typ == "":
			return http.StatusBadRequest, sfErrorBody("INVALID_TYPE", "Must send a concrete entity type.")
		case !sf.objectIs(in.typ) && upsert:
			return http.StatusBadRequest, sfErrorBody("INVALID_TYPE", "The records must all be of type "+sf.object+", the type in the URI; record "+strconv.Itoa(i)+" is a "+in.typ)
		case !sf.objectIs(in.typ):
			return http.StatusBadRequest, sfErrorBody("INVALID_TYPE", "sObject type '"+in.typ+"' is not supported.")
		}
		ins[i] = in
	}
	ops := make([]sfOp, len(ins))
	count := map[string]int{}
	update := c.rt.e == sfUpdateMany
	for i, in := range ins {
		op := sfOp{fields: in.fields, upsert: upsert}
		if update {
			// "Each object must contain an id field with a valid ID
			// value": it names the record, and is not written.
			p := in.fields["Id"]
			in.fields = maps.Clone(in.fields)
			delete(in.fields, "Id")
			op.fields = in.fields
			if p == nil || *p == "" {
				op.errs = []sfRecordError{{StatusCode: "MISSING_ARGUMENT", Message: "Id not specified in an update call", Fields: []string{}}}
				ops[i] = op
				continue
			}
			op.id = *p
		}
		if upsert {
			if p := in.fields[sf.idField]; p != nil && *p != "" {
				op.key = *p
				count[foldKey(op.key)]++
			}
		}
		op.errs = sf.validate(in, c.f, !upsert && !update)
		ops[i] = op
	}
	if upsert {
		for i := range ops {
			switch {
			case ops[i].key == "":
				ops[i].errs = append([]sfRecordError{{StatusCode: "MISSING_ARGUMENT", Message: sf.idField + " not specified", Fields: []string{}}}, ops[i].errs...)
			case count[foldKey(ops[i].key)] > 1:
				// Every record with the value fails, not just the later ones.
				ops[i].errs = append([]sfRecordError{{StatusCode: "DUPLICATE_EXTERNAL_ID", Message: "Duplicate external id specified: " + ops[i].key, Fields: []string{}}}, ops[i].errs...)
			}
		}
	}
	c.wait() // the processing time, before the write, as for the other APIs
	res := sf.store.apply(ops, req.AllOrNone, s.now())
	for i := range res {
		if len(res[i].errs) == 0 && !res[i].created && (update || upsert) {
			s.audit.updates.Add(1)
		}
	}
	return http.StatusOK, sfMarshal(saveResults(res, upsert))
}

// checkExternal answers an upsert or get by a field that does not exist
// (404) or is not an External ID (400); 0 when the field serves.
func (sf *salesforce) checkExternal(name string, collection bool) (int, []byte) {
	f := sf.field(name)
	if f == nil {
		return http.StatusNotFound, sfErrorBody("NOT_FOUND", "Provided external ID field does not exist or is not accessible: "+name)
	}
	if !f.external || collection && f.name == "Id" {
		return http.StatusBadRequest, sfErrorBody("INVALID_FIELD", "Invalid field for upsert, must be an External Id custom or standard indexed field: "+f.name+" ("+sf.object+")")
	}
	return 0, nil
}

// salesforceUpsertOne answers PATCH /sobjects/{object}/{field}/{value}:
// 201 when created, 200 (204 before API version 46.0) when updated, 300
// when the value matches several records, 400 for an invalid record.
func (s *Server) salesforceUpsertOne(c *sfCall, body []byte) (int, []byte) {
	sf := s.sf
	if !sf.objectIs(c.rt.object) {
		return http.StatusNotFound, sfErrorBody("NOT_FOUND", sfNotFound)
	}
	if st, b := sf.checkExternal(c.rt.field, false); st != 0 {
		return st, b
	}
	var raw map[string]json.RawMessage
	if st, b, ok := decodeSF(body, &raw); !ok {
		return st, b
	}
	in, st, b := sf.decodeRecord(raw)
	if st != 0 {
		return st, b
	}
	if m := sf.store.byExternal(c.rt.arg); len(m) > 1 {
		return http.StatusMultipleChoices, c.choices(m)
	}
	op := sfOp{fields: in.fields, upsert: true, key: c.rt.arg, errs: sf.validate(in, c.f, false)}
	c.wait()
	res := sf.store.apply([]sfOp{op}, true, s.now())[0]
	switch {
	case len(res.errs) > 0 && res.errs[0].StatusCode == "DUPLICATE_EXTERNAL_ID":
		// Another request made the value ambiguous meanwhile.
		return http.StatusMultipleChoices, c.choices(sf.store.byExternal(c.rt.arg))
	case len(res.errs) > 0:
		out := make([]sfError, len(res.errs))
		for i, e := range res.errs {
			out[i] = sfError{Message: e.Message, ErrorCode: e.StatusCode, Fields: e.Fields}
		}
		return http.StatusBadRequest, sfMarshal(out)
	case res.created:
		return http.StatusCreated, sfMarshal(saveResults([]sfResult{res}, true)[0])
	case versionBefore(c.rt.version, 46):
		return http.StatusNoContent, nil
	}
	return http.StatusOK, sfMarshal(saveResults([]sfResult{res}, true)[0])
}

// choices is a 300's body: the URLs of the matching records.
func (c *sfCall) choices(rs []sfRecord) []byte {
	urls := make([]string, len(rs))
	for i, r := range rs {
		urls[i] = c.recordURL(c.s.sf.object, r.id)
	}
	return sfMarshal(urls)
}

// versionBefore reports whether "vNN.N" is below major.
func versionBefore(v string, major int) bool {
	n, err := strconv.Atoi(strings.TrimPrefix(strings.Split(v, ".")[0], "v"))
	return err == nil && n < major
}

// appendRecord writes r as Salesforce does: attributes first, then the
// fields asked for in their order, null when blank.
func (c *sfCall) appendRecord(b []byte, r *sfRecord, fields []string) []byte {
	sf := c.s.sf
	b = append(b, `{"attributes":{"type":`...)
	b = appendJSONString(b, sf.object)
	b = append(b, `,"url":`...)
	b = appendJSONString(b, c.recordURL(sf.object, r.id))
	b = append(b, '}')
	for _, name := range fields {
		b = append(b, ',')
		b = appendJSONString(b, name)
		b = append(b, ':')
		if v, ok := r.value(name); ok && v != "" {
			b = appendJSONString(b, v)
		} else {
			b = append(b, "null"...)
		}
	}
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	q := sfMarshal(s)
	return append(b, q[:len(q)-1]...) // without the newline
}

// allFields are the names of every field, for a GET without ?fields=.
func (sf *salesforce) allFields() []string {
	out := make([]string, len(sf.fields))
	for i, f := range sf.fields {
		out[i] = f.name
	}
	return out
}

// askedFields resolves a fields parameter; a field the object lacks is a
// 400 INVALID_FIELD.
func (sf *salesforce) askedFields(list string) ([]string, int, []byte) {
	var out []string
	for _, name := range splitList(list) {
		f := sf.field(name)
		if f == nil {
			return nil, http.StatusBadRequest, sfErrorBody("INVALID_FIELD", "No such column '"+name+"' on entity '"+sf.object+"'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.")
		}
		out = append(out, f.name)
	}
	return out, 0, nil
}

// salesforceGet answers GET /sobjects/{object}/{id} and GET
// /sobjects/{object}/{field}/{value}.
func (s *Server) salesforceGet(c *sfCall) (int, []byte) {
	sf := s.sf
	if !sf.objectIs(c.rt.object) {
		return http.StatusNotFound, sfErrorBody("NOT_FOUND", sfNotFound)
	}
	fields := sf.allFields()
	if list := c.r.URL.Query().Get("fields"); list != "" {
		var st int
		var b []byte
		if fields, st, b = sf.askedFields(list); st != 0 {
			return st, b
		}
	}
	var rs []sfRecord
	if c.rt.e == sfGet {
		if r, ok := sf.store.get(c.rt.arg); ok {
			rs = []sfRecord{r}
		}
	} else {
		if st, b := sf.checkExternal(c.rt.field, false); st != 0 {
			return st, b
		}
		rs = sf.store.byExternal(c.rt.arg)
	}
	switch len(rs) {
	case 0:
		return http.StatusNotFound, sfErrorBody("NOT_FOUND", sfNotFound)
	case 1:
		return http.StatusOK, append(c.appendRecord(nil, &rs[0], fields), '\n')
	}
	return http.StatusMultipleChoices, c.choices(rs)
}

// salesforceRetrieve answers GET /composite/sobjects/{object}?ids=&fields=:
// one element per id, null where none is found.
func (s *Server) salesforceRetrieve(c *sfCall) (int, []byte) {
	sf := s.sf
	if !sf.objectIs(c.rt.object) {
		return http.StatusNotFound, sfErrorBody("NOT_FOUND", sfNotFound)
	}
	q := c.r.URL.Query()
	ids := splitList(q.Get("ids"))
	if len(ids) == 0 || q.Get("fields") == "" {
		return http.StatusBadRequest, sfErrorBody("MISSING_ARGUMENT", "Both the ids and the fields parameters are required")
	}
	if len(ids) > 2000 {
		return http.StatusBadRequest, sfErrorBody("EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 2000 records into this call")
	}
	fields, st, b := sf.askedFields(q.Get("fields"))
	if st != 0 {
		return st, b
	}
	out := []byte{'['}
	for i, id := range ids {
		if i > 0 {
			out = append(out, ',')
		}
		if r, ok := sf.store.get(id); ok {
			out = c.appendRecord(out, &r, fields)
		} else {
			out = append(out, "null"...)
		}
	}
	return http.StatusOK, append(out, ']', '\n')
}

// salesforceQuery answers GET /query?q=.
func (s *Server) salesforceQuery(c *sfCall) (int, []byte) {
	sf := s.sf
	q := c.r.URL.Query().Get("q")
	if strings.TrimSpace(q) == "" {
		return http.StatusBadRequest, sfErrorBody("MALFORMED_QUERY", "A query string has to be specified")
	}
	pq, err := sf.parseSOQL(q)
	if err != nil {
		return http.StatusBadRequest, sfErrorBody(err.code, err.msg)
	}
	rs := sf.store.scan(pq.where.match)
	if pq.limit >= 0 && len(rs) > pq.limit {
		rs = rs[:pq.limit]
	}
	loc := ""
	if len(rs) > sf.batch {
		loc = sf.cursors.add(rs, pq.fields)
	}
	return http.StatusOK, c.queryPage(rs, pq.fields, loc, 0)
}

// salesforceQueryMore answers GET /query/{locator}-{offset}.
func (s *Server) salesforceQueryMore(c *sfCall) (int, []byte) {
	sf := s.sf
	loc, off, ok := strings.Cut(c.rt.arg, "-")
	n, err := strconv.Atoi(off)
	var rs []sfRecord
	var fields []string
	if ok && err == nil && n >= 0 {
		rs, fields, ok = sf.cursors.get(loc)
	}
	if !ok || err != nil || n < 0 || n > len(rs) {
		return http.StatusBadRequest, sfErrorBody("INVALID_QUERY_LOCATOR", "invalid query locator")
	}
	return http.StatusOK, c.queryPage(rs, fields, loc, n)
}

// queryPage is the answer holding rs[from:] up to the batch size.
func (c *sfCall) queryPage(rs []sfRecord, fields []string, loc string, from int) []byte {
	sf := c.s.sf
	to := min(len(rs), from+sf.batch)
	b := []byte(`{"totalSize":` + strconv.Itoa(len(rs)) + `,"done":` + strconv.FormatBool(to == len(rs)))
	if to < len(rs) {
		v := c.rt.version
		b = append(b, `,"nextRecordsUrl":`...)
		b = appendJSONString(b, SalesforcePathPrefix+v+"/query/"+loc+"-"+strconv.Itoa(to))
	}
	b = append(b, `,"records":[`...)
	for i := from; i < to; i++ {
		if i > from {
			b = append(b, ',')
		}
		b = c.appendRecord(b, &rs[i], fields)
	}
	return append(b, ']', '}', '\n')
}

// sfDescribeField is one field of a describe answer.
type sfDescribeField struct {
	Name          string `json:"name"`
	Label         string `json:"label"`
	Type          string `json:"type"`
	Length        int    `json:"length"`
	Custom        bool   `json:"custom"`
	ExternalID    bool   `json:"externalId"`
	Unique        bool   `json:"unique"`
	CaseSensitive bool   `json:"caseSensitive"`
	IDLookup      bool   `json:"idLookup"`
	Createable    bool   `json:"createable"`
	Updateable    bool   `json:"updateable"`
	Nillable      bool   `json:"nillable"`
	Filterable    bool   `json:"filterable"`
}

type sfDescribeResult struct {
	Name         string            `json:"name"`
	Label        string            `json:"label"`
	KeyPrefix    string            `json:"keyPrefix"`
	Custom       bool              `json:"custom"`
	Createable   bool              `json:"createable"`
	Updateable   bool              `json:"updateable"`
	Queryable    bool              `json:"queryable"`
	Fields       []sfDescribeField `json:"fields"`
	URLs         map[string]string `json:"urls"`
	Retrieveable bool              `json:"retrieveable"`
}

// salesforceDescribe answers GET /sobjects/{object}/describe.
func (s *Server) salesforceDescribe(c *sfCall) (int, []byte) {
	sf := s.sf
	if !sf.objectIs(c.rt.object) {
		return http.StatusNotFound, sfErrorBody("NOT_FOUND", sfNotFound)
	}
	base := SalesforcePathPrefix + c.rt.version + "/sobjects/" + sf.object
	out := sfDescribeResult{Name: sf.object, Label: sf.object, KeyPrefix: sf.prefix, Custom: strings.HasSuffix(sf.object, "__c"),
		Createable: true, Updateable: true, Queryable: true, Retrieveable: true,
		URLs: map[string]string{"sobject": base, "describe": base + "/describe", "rowTemplate": base + "/{ID}"}}
	for _, f := range sf.fields {
		out.Fields = append(out.Fields, sfDescribeField{
			Name: f.name, Label: f.label, Type: f.typ, Length: f.length, Custom: f.custom,
			ExternalID: f.external, Unique: f.unique, IDLookup: f.external || f.name == "Id" || f.name == "Email",
			Createable: !f.readOnly, Updateable: !f.readOnly, Nillable: !f.required && !f.readOnly || f.name == "Name",
			Filterable: true,
		})
	}
	return http.StatusOK, sfMarshal(out)
}

// salesforceContactFields are the standard fields Contacts returns as
// contact fields rather than attributes.
var salesforceContactFields = map[string]bool{"Email": true, "FirstName": true, "LastName": true, "Phone": true}

// contacts returns the records as the generic API's type: the id field as
// ExternalID, the other custom fields as Attributes.
func (sf *salesforce) contacts() []crmapi.StoredContact {
	rs := sf.store.scan(func(*sfRecord) bool { return true })
	out := make([]crmapi.StoredContact, len(rs))
	for i, r := range rs {
		sc := crmapi.StoredContact{ID: r.id, CreatedAt: formatSFTime(r.created)}
		sc.Contact = contact.Contact{ExternalID: r.fields[sf.idField], Email: r.fields["Email"], FirstName: r.fields["FirstName"],
			LastName: r.fields["LastName"], Phone: r.fields["Phone"]}
		var attrs []contact.Attr
		for k, v := range r.fields {
			if k != sf.idField && !salesforceContactFields[k] {
				attrs = append(attrs, contact.Attr{Name: k, Value: v})
			}
		}
		sc.Attributes = contact.SortAttrs(attrs)
		out[i] = sc
	}
	return out
}
