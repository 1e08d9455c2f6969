package crmapi

import "crmsync/shared/contact"

// FieldNames are a CRM's names for a contact's own fields.
type FieldNames struct{ Email, FirstName, LastName, Phone string }

// PutFields hands put a contact as a CRM stores it: its attributes under
// rename(name) (nil: their own names), its own fields under names, and
// its key under keyField, in that order, so a field of the contact wins
// over an attribute of the same name. Empty fields are left out, so an
// upsert keeps what the CRM holds for them.
func PutFields(ct *contact.Contact, names FieldNames, keyField string, rename func(string) string, put func(name, value string)) {
	for k, v := range ct.Attributes {
		if rename != nil {
			k = rename(k)
		}
		put(k, v)
	}
	for _, f := range [...]struct{ name, v string }{
		{names.Email, ct.Email}, {names.FirstName, ct.FirstName}, {names.LastName, ct.LastName}, {names.Phone, ct.Phone},
	} {
		if f.v != "" {
			put(f.name, f.v)
		}
	}
	put(keyField, ct.ExternalID)
}
