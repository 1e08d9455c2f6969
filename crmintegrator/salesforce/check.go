package salesforce

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"crmsync/crmintegrator/crmapi"
)

// describeField is the part of a field's describe the connector reads.
type describeField struct {
	Name          string `json:"name"`
	Type          string `json:"type"`
	ExternalID    bool   `json:"externalId"`
	Unique        bool   `json:"unique"`
	CaseSensitive bool   `json:"caseSensitive"`
	Createable    bool   `json:"createable"`
	Updateable    bool   `json:"updateable"`
}

type describeResult struct {
	Name   string          `json:"name"`
	Fields []describeField `json:"fields"`
}

// Check reads the object's describe and refuses an object or id field the
// connector cannot work with: the object must exist, and the id field must
// be an External ID with unique values, or upserts by it cannot promise one
// record per key. It also reads the org's limits, so that the reserve holds
// from the first write. It returns the fields a record may be written to.
func (c *Connector) Check(ctx context.Context) ([]string, error) {
	var d describeResult
	err := c.send(ctx, "check", http.MethodGet, c.api+"/sobjects/"+c.cfg.Object+"/describe", nil, &d)
	var ce *crmapi.Error
	switch {
	case errors.As(err, &ce) && ce.Status == http.StatusNotFound:
		return nil, fmt.Errorf("salesforce: the object %q does not exist in this org, or the token's user may not see it: check -crm-object (its API name, e.g. Contact or Customer__c)", c.cfg.Object)
	case err != nil:
		return nil, fmt.Errorf("salesforce: describe %s: %w", c.cfg.Object, err)
	}
	fix := fmt.Sprintf("in Setup → Object Manager → %s → Fields & Relationships, create a Text field named %s with \"External ID\" and \"Unique\" ticked (or pick such a field with -crm-id-field)",
		c.cfg.Object, strings.TrimSuffix(c.cfg.IDField, "__c"))
	var id *describeField
	for i := range d.Fields {
		if strings.EqualFold(d.Fields[i].Name, c.cfg.IDField) {
			id = &d.Fields[i]
		}
	}
	switch {
	case id == nil:
		return nil, fmt.Errorf("salesforce: %s has no field %q to hold the dedup key: %s", c.cfg.Object, c.cfg.IDField, fix)
	case !id.ExternalID:
		return nil, fmt.Errorf("salesforce: the field %s.%s is not an External ID, so Salesforce cannot upsert by it: %s", c.cfg.Object, id.Name, fix)
	case !id.Unique:
		return nil, fmt.Errorf("salesforce: the External ID field %s.%s does not require unique values, so two runs could create two records for one key: %s", c.cfg.Object, id.Name, fix)
	case !id.Createable || !id.Updateable:
		return nil, fmt.Errorf("salesforce: the token's user may not write the field %s.%s (field-level security): give its profile or a permission set edit access to it", c.cfg.Object, id.Name)
	}
	c.caseSensitive.Store(id.CaseSensitive)
	names := map[string]string{}
	var fields []string
	for _, f := range d.Fields {
		if f.Createable || f.Updateable {
			fields = append(fields, f.Name)
			names[strings.ToLower(f.Name)] = f.Name
		}
	}
	c.names.Store(&names)
	if _, err := c.limits(ctx, "check"); err != nil {
		return nil, fmt.Errorf("salesforce: read the org's limits: %w", err)
	}
	return fields, nil
}
