package replay

import (
	"fmt"
	"strings"
)

// maxDiffCells bounds the table of lineDiff; beyond it the diff shows the
// first differing line only, which is enough to see that a golden is off.
const maxDiffCells = 16 << 20

// lineDiff returns a unified diff of want and got (line by line, three
// lines of context), or "" when they are equal.
func lineDiff(wantName, gotName, want, got string) string {
	if want == got {
		return ""
	}
	a, b := splitLines(want), splitLines(got)
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", wantName, gotName)
	if (len(a)+1)*(len(b)+1) > maxDiffCells {
		i := 0
		for i < len(a) && i < len(b) && a[i] == b[i] {
			i++
		}
		fmt.Fprintf(&out, "@@ too large for a full diff; first difference at line %d @@\n", i+1)
		if i < len(a) {
			fmt.Fprintf(&out, "-%s\n", a[i])
		}
		if i < len(b) {
			fmt.Fprintf(&out, "+%s\n", b[i])
		}
		return out.String()
	}
	writeHunks(&out, editScript(a, b), 3)
	return out.String()
}

// splitLines splits s into lines; a missing final newline is marked the
// way diff(1) marks it, so that it shows up in a diff.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	lines := strings.Split(s, "\n")
	if lines[len(lines)-1] == "" {
		return lines[:len(lines)-1]
	}
	lines[len(lines)-1] += "\n\\ No newline at end of file"
	return lines
}

// edit is one line of an edit script: ' ' kept, '-' only in a, '+' only
// in b; ai and bi are the line's index in a and b.
type edit struct {
	op     byte
	ai, bi int
	text   string
}

// editScript is the longest common subsequence of a and b, found by
// dynamic programming, as an edit script. Goldens are small, so the
// quadratic table is fine.
func editScript(a, b []string) []edit {
	n, m := len(a), len(b)
	// lcs[i][j] is the LCS length of a[i:] and b[j:].
	lcs := make([][]int32, n+1)
	for i := range lcs {
		lcs[i] = make([]int32, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var es []edit
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			es = append(es, edit{' ', i, j, a[i]})
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] > lcs[i+1][j]):
			es = append(es, edit{'+', i, j, b[j]})
			j++
		default:
			es = append(es, edit{'-', i, j, a[i]})
			i++
		}
	}
	return es
}

// writeHunks writes the changes of es with ctx lines of context around
// them, grouped into hunks with "@@ -a,n +b,m @@" headers.
func writeHunks(out *strings.Builder, es []edit, ctx int) {
	for start := 0; start < len(es); {
		// Find the next change.
		for start < len(es) && es[start].op == ' ' {
			start++
		}
		if start == len(es) {
			return
		}
		lo := max(start-ctx, 0)
		// Extend the hunk while changes are within 2*ctx of each other.
		end := start
		for k := start; k < len(es); k++ {
			if es[k].op != ' ' {
				end = k
			} else if k-end > 2*ctx {
				break
			}
		}
		hi := min(end+ctx+1, len(es))
		var na, nb int
		for _, e := range es[lo:hi] {
			if e.op != '+' {
				na++
			}
			if e.op != '-' {
				nb++
			}
		}
		fmt.Fprintf(out, "@@ -%s +%s @@\n", hunkRange(es[lo].ai, na), hunkRange(es[lo].bi, nb))
		for _, e := range es[lo:hi] {
			fmt.Fprintf(out, "%c%s\n", e.op, e.text)
		}
		start = hi
	}
}

// hunkRange is the "start,count" of a hunk header, 1-based; an empty range
// names the line before it, as diff -u does.
func hunkRange(start, n int) string {
	if n == 0 {
		return fmt.Sprintf("%d,0", start)
	}
	return fmt.Sprintf("%d,%d", start+1, n)
}
