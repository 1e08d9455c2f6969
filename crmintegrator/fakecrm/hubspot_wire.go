package fakecrm

// JSON shapes of HubSpot's CRM v3 contacts and properties APIs, as the
// official OpenAPI spec (HubSpot/HubSpot-public-api-spec-collection,
// contacts.json and properties.json) names them. Field order follows the
// captures of real answers, since encoding/json keeps it.

// hsError is HubSpot's Error schema. Real bodies order their keys status,
// message, correlationId, errors, context, links, category.
type hsError struct {
	Status        string              `json:"status"`
	Message       string              `json:"message"`
	CorrelationID string              `json:"correlationId"`
	Errors        []hsErrorDetail     `json:"errors,omitempty"`
	Context       map[string][]string `json:"context,omitempty"`
	Category      string              `json:"category,omitempty"`
}

type hsErrorDetail struct {
	Message string              `json:"message"`
	Code    string              `json:"code,omitempty"`
	Context map[string][]string `json:"context,omitempty"`
}

// hsRateLimitError is a 429: errorType and policyName instead of category.
type hsRateLimitError struct {
	Status        string `json:"status"`
	Message       string `json:"message"`
	ErrorType     string `json:"errorType"`
	CorrelationID string `json:"correlationId"`
	PolicyName    string `json:"policyName"`
}

// hsStandardError is an item of a 207's errors[].
type hsStandardError struct {
	Status   string              `json:"status"`
	Category string              `json:"category"`
	Message  string              `json:"message"`
	Context  map[string][]string `json:"context"`
}

// hsObject is SimplePublicObject; New is set only on upsert results
// (SimplePublicUpsertObject), where it is required.
type hsObject struct {
	ID         string             `json:"id"`
	Properties map[string]*string `json:"properties"`
	CreatedAt  string             `json:"createdAt"`
	UpdatedAt  string             `json:"updatedAt"`
	Archived   bool               `json:"archived"`
	New        *bool              `json:"new,omitempty"`
}

// hsBatchResponse is BatchResponseSimplePublicObject, and its WithErrors
// variant when NumErrors > 0.
type hsBatchResponse struct {
	Status      string            `json:"status"`
	Results     []hsObject        `json:"results"`
	NumErrors   int               `json:"numErrors,omitempty"`
	Errors      []hsStandardError `json:"errors,omitempty"`
	StartedAt   string            `json:"startedAt"`
	CompletedAt string            `json:"completedAt"`
}

// hsBatchInput is one input of batch/create, batch/upsert and batch/update.
type hsBatchInput struct {
	ID                 string            `json:"id"`
	IDProperty         string            `json:"idProperty"`
	Properties         map[string]string `json:"properties"`
	ObjectWriteTraceID string            `json:"objectWriteTraceId"`
}

type hsBatchRequest struct {
	Inputs []hsBatchInput `json:"inputs"`
}

type hsBatchReadRequest struct {
	IDProperty string `json:"idProperty"`
	Inputs     []struct {
		ID string `json:"id"`
	} `json:"inputs"`
	Properties []string `json:"properties"`
}

type hsFilter struct {
	PropertyName string   `json:"propertyName"`
	Operator     string   `json:"operator"`
	Value        *string  `json:"value"`
	Values       []string `json:"values"`
}

type hsSearchRequest struct {
	FilterGroups []struct {
		Filters []hsFilter `json:"filters"`
	} `json:"filterGroups"`
	Properties []string `json:"properties"`
	Limit      *int     `json:"limit"`
	After      string   `json:"after"`
}

type hsPaging struct {
	Next struct {
		After string `json:"after"`
	} `json:"next"`
}

type hsSearchResponse struct {
	Total   int        `json:"total"`
	Results []hsObject `json:"results"`
	Paging  *hsPaging  `json:"paging,omitempty"`
}

// hsProperty is the Property schema of the properties API.
type hsProperty struct {
	Name                 string                 `json:"name"`
	Label                string                 `json:"label"`
	Type                 string                 `json:"type"`
	FieldType            string                 `json:"fieldType"`
	Description          string                 `json:"description"`
	GroupName            string                 `json:"groupName"`
	Options              []struct{}             `json:"options"`
	DisplayOrder         int                    `json:"displayOrder"`
	Calculated           bool                   `json:"calculated"`
	ExternalOptions      bool                   `json:"externalOptions"`
	HasUniqueValue       bool                   `json:"hasUniqueValue"`
	Hidden               bool                   `json:"hidden"`
	HubspotDefined       bool                   `json:"hubspotDefined"`
	ModificationMetadata hsModificationMetadata `json:"modificationMetadata"`
	FormField            bool                   `json:"formField"`
	Archived             bool                   `json:"archived"`
	CreatedAt            string                 `json:"createdAt"`
	UpdatedAt            string                 `json:"updatedAt"`
}

type hsModificationMetadata struct {
	Archivable         bool `json:"archivable"`
	ReadOnlyDefinition bool `json:"readOnlyDefinition"`
	ReadOnlyValue      bool `json:"readOnlyValue"`
}

type hsPropertyList struct {
	Results []hsProperty `json:"results"`
}

// hsPropertyProblem is one item of the JSON array that a "Property values
// were not valid: " message embeds.
type hsPropertyProblem struct {
	IsValid               bool   `json:"isValid"`
	Message               string `json:"message"`
	Error                 string `json:"error"`
	Name                  string `json:"name"`
	LocalizedErrorMessage string `json:"localizedErrorMessage"`
	PortalID              int    `json:"portalId"`
}
