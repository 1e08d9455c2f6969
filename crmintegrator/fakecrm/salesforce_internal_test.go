package fakecrm

import (
	"strings"
	"testing"
)

// TestSFSuffix checks the 18-character suffix against ids in Salesforce's
// own examples (the upsert and Query More Results pages).
func TestSFSuffix(t *testing.T) {
	for id15, want := range map[string]string{"00190000001pPvH": "AAU", "003RO0000035WQg": "YAM", "a00D0000008pQSN": "IA2"} {
		if got := sfSuffix(id15); got != want {
			t.Errorf("sfSuffix(%s) = %s, want %s", id15, got, want)
		}
	}
	if got := makeSFID("003", 62); got != "003RO0000000010YAA" {
		t.Errorf("makeSFID(003, 62) = %s", got)
	}
}

// TestSOQLLength: the SOQL limit, which a GET's 16 KB URI cannot reach.
func TestSOQLLength(t *testing.T) {
	sf, err := newSalesforce(SalesforceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	q := "SELECT Id FROM Contact WHERE External_Id__c IN ('" + strings.Repeat("x", SalesforceMaxSOQL) + "')"
	if _, e := sf.parseSOQL(q); e == nil || e.code != "MALFORMED_QUERY" || !strings.Contains(e.msg, "cannot be longer than 100000 characters") {
		t.Errorf("parse of %d characters: %v", len(q), e)
	}
	if _, e := sf.parseSOQL(q[:SalesforceMaxSOQL-2] + "')"); e != nil {
		t.Errorf("parse of exactly %d characters: %v", SalesforceMaxSOQL, e)
	}
}
