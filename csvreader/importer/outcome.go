package importer

import "sync/atomic"

// outcome is how a row read ends when it is not sent, or how its sending
// ended: each row counts in exactly one (Report.Accounted).
type outcome uint8

const (
	outCreated     outcome = iota + 1 // the CRM created it
	outUpdated                        // the CRM updated it
	outUnchanged                      // the CRM holds it as the export says
	outDuplicate                      // its key came earlier in the files
	outStale                          // the CRM holds a newer version
	outChanged                        // changed, not sent (-changed skip or report)
	outRejectedCRM                    // the CRM refused it
	outFailed                         // given up after retries
)

// String is the outcome's name in the skipped file and the metrics.
func (o outcome) String() string {
	switch o {
	case outCreated:
		return "created"
	case outUpdated:
		return "updated"
	case outUnchanged:
		return "unchanged"
	case outDuplicate:
		return "duplicate_in_file"
	case outStale:
		return "stale"
	case outChanged:
		return "changed"
	case outRejectedCRM:
		return "rejected_by_crm"
	case outFailed:
		return "failed"
	}
	return "unknown"
}

// counter is the pipeline's count of rows of outcome o.
func (n *counters) counter(o outcome) *atomic.Int64 {
	switch o {
	case outCreated:
		return &n.created
	case outUpdated:
		return &n.updated
	case outUnchanged:
		return &n.unchanged
	case outDuplicate:
		return &n.dupes
	case outStale:
		return &n.stale
	case outChanged:
		return &n.changed
	case outRejectedCRM:
		return &n.crmRejected
	case outFailed:
		return &n.failed
	}
	panic("importer: no counter for outcome " + o.String())
}
