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
	for _, a := range ct.Attributes {
		k := a.Name
		if rename != nil {
			k = rename(k)
		}
		put(k, a.Value)
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

// Of is the CRM's name for the own field named name (a name of
// contact.Fields other than the key), "" for any other name. Tests hold
// every connector to contact.Fields through it.
func (n FieldNames) Of(name string) string {
	switch name {
	case "email":
		return n.Email
	case "first_name":
		return n.FirstName
	case "last_name":
		return n.LastName
	case "phone":
		return n.Phone
	}
	return ""
}

// PutUpdate hands put the fields an update writes, as a CRM names them:
// the listed attributes under rename(name) (nil: their own names), then
// the listed own fields under names, so a field of the contact wins over
// an attribute of the same name. An empty value is handed on as "": the
// connector writes it as its CRM clears a field.
func PutUpdate(u *Update, names FieldNames, rename func(string) string, put func(name, value string)) {
	own, attrs := SplitFields(u.Fields)
	for _, a := range attrs {
		k := a
		if rename != nil {
			k = rename(a)
		}
		v, _ := u.Contact.Attributes.Get(a)
		put(k, v)
	}
	for _, f := range own {
		if n := names.Of(f.Name); n != "" {
			put(n, f.Get(&u.Contact))
		}
	}
}
