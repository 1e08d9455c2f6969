package deploy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// selector is a metric name in a PromQL expression with its label
// matchers.
type selector struct {
	name     string
	matchers []matcher
}

type matcher struct{ label, op, value string }

// query is what the dashboard test checks in one PromQL expression.
type query struct {
	selectors []selector
	grouping  []string // labels of by (...), without (...), on (...), ignoring (...)
}

var (
	aggregators = set("sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group")
	functions   = set("rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "abs", "ceil", "floor", "round",
		"clamp", "clamp_min", "clamp_max", "time", "timestamp", "vector", "scalar", "absent", "absent_over_time", "changes", "resets",
		"avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time", "label_replace", "sort", "sort_desc")
	groupers = set("by", "without", "on", "ignoring", "group_left", "group_right")
	keywords = set("and", "or", "unless", "offset", "bool")
)

func set(words ...string) map[string]bool {
	m := map[string]bool{}
	for _, w := range words {
		m[w] = true
	}
	return m
}

// parseQuery finds the metric selectors and grouping labels of a PromQL
// expression. It is no full parser, only a scanner strict enough for
// dashboards: an unknown function, a selector without a name or an
// unbalanced brace is an error, so a typo cannot pass as a metric.
func parseQuery(expr string) (query, error) {
	var q query
	s := expr
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	ident := func() string {
		i := 0
		for i < len(s) && isIdent(s[i]) {
			i++
		}
		w := s[:i]
		s = s[i:]
		return w
	}
	skipSpace := func() { s = strings.TrimLeft(s, " \t\n") }
	str := func() (string, error) {
		q := s[0]
		end := strings.IndexByte(s[1:], q)
		if end < 0 {
			return "", fmt.Errorf("unterminated string in %q", expr)
		}
		v := s[1 : 1+end]
		s = s[2+end:]
		return v, nil
	}
	labelList := func() ([]string, error) {
		skipSpace()
		if !strings.HasPrefix(s, "(") {
			return nil, fmt.Errorf("want ( after a grouping keyword in %q", expr)
		}
		end := strings.IndexByte(s, ')')
		if end < 0 {
			return nil, fmt.Errorf("unbalanced ( in %q", expr)
		}
		var out []string
		for _, l := range strings.Split(s[1:end], ",") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
		s = s[end+1:]
		return out, nil
	}
	for skipSpace(); s != ""; skipSpace() {
		c := s[0]
		switch {
		case c == '[': // a range or a subquery step, such as [$__rate_interval]
			end := strings.IndexByte(s, ']')
			if end < 0 {
				return q, fmt.Errorf("unbalanced [ in %q", expr)
			}
			s = s[end+1:]
		case c == '{':
			return q, fmt.Errorf("a selector without a metric name in %q", expr)
		case c == '"' || c == '\'':
			if _, err := str(); err != nil {
				return q, err
			}
		case c == '$': // a Grafana variable
			s = s[1:]
			ident()
		case c >= '0' && c <= '9' || c == '.':
			for s != "" && (isIdent(s[0]) || s[0] == '.') {
				s = s[1:]
			}
		case isIdentStart(c):
			w := ident()
			skipSpace()
			call := strings.HasPrefix(s, "(")
			switch {
			case groupers[w]:
				ls, err := labelList()
				if err != nil {
					return q, err
				}
				q.grouping = append(q.grouping, ls...)
			case aggregators[w], keywords[w]:
			case functions[w] && call:
			case call:
				return q, fmt.Errorf("unknown function %s in %q", w, expr)
			default:
				sel := selector{name: w}
				if strings.HasPrefix(s, "{") {
					ms, err := parseMatchers(&s)
					if err != nil {
						return q, fmt.Errorf("%v in %q", err, expr)
					}
					sel.matchers = ms
				}
				q.selectors = append(q.selectors, sel)
			}
		default:
			s = s[1:] // an operator, a comma or a parenthesis
		}
	}
	return q, nil
}

// parseMatchers reads {label op "value", ...} from *s.
func parseMatchers(s *string) ([]matcher, error) {
	end := strings.IndexByte(*s, '}')
	if end < 0 {
		return nil, fmt.Errorf("unbalanced {")
	}
	body := (*s)[1:end]
	*s = (*s)[end+1:]
	var out []matcher
	for _, part := range strings.Split(body, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		var m matcher
		for _, op := range []string{"=~", "!~", "!=", "="} {
			if l, v, ok := strings.Cut(part, op); ok {
				m = matcher{strings.TrimSpace(l), op, strings.Trim(strings.TrimSpace(v), `"'`)}
				break
			}
		}
		if m.label == "" {
			return nil, fmt.Errorf("bad matcher %q", part)
		}
		out = append(out, m)
	}
	return out, nil
}

func TestParseQuery(t *testing.T) {
	tests := []struct {
		expr     string
		names    []string
		grouping []string
		err      string
	}{
		{"crmintegrator_breaker_state", []string{"crmintegrator_breaker_state"}, nil, ""},
		{`sum by (outcome) (rate(crmintegrator_verdicts_total{outcome="delivered"}[$__rate_interval]))`, []string{"crmintegrator_verdicts_total"}, []string{"outcome"}, ""},
		{`sum by (op, code) (rate(x_total{code="429"}[5m]))`, []string{"x_total"}, []string{"op", "code"}, ""},
		{"histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m])))", []string{"h_bucket"}, []string{"le"}, ""},
		{"rate(h_sum[1m]) / rate(h_count[1m])", []string{"h_sum", "h_count"}, nil, ""},
		{"a / b > 0.5 and c offset 5m", []string{"a", "b", "c"}, nil, ""},
		{"sum(a) without (job)", []string{"a"}, []string{"job"}, ""},
		{"rat(a[1m])", nil, nil, "unknown function rat"},
		{`{__name__="a"}`, nil, nil, "without a metric name"},
		{`a{b="c"`, nil, nil, "unbalanced {"},
	}
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			q, err := parseQuery(tc.expr)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error about %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, s := range q.selectors {
				names = append(names, s.name)
			}
			if !slices.Equal(names, tc.names) || !slices.Equal(q.grouping, tc.grouping) {
				t.Errorf("got names %q grouping %q, want %q %q", names, q.grouping, tc.names, tc.grouping)
			}
		})
	}
	q, _ := parseQuery(`a{code="429", op!~"look.*"}`)
	if want := []matcher{{"code", "=", "429"}, {"op", "!~", "look.*"}}; !slices.Equal(q.selectors[0].matchers, want) {
		t.Errorf("matchers %+v, want %+v", q.selectors[0].matchers, want)
	}
}
