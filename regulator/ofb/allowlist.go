package ofb

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"sync"

	"github.com/finnest/eventruntime/regulator"
)

// Sections of the PCM endpoint allow-list. Each section belongs to a
// different report API: private reports go to /report-api/v1/private/report/,
// open data and credit portability reports have their own operations.
const (
	SectionCreditPortability = "API Credit Portability"
	SectionOpenData          = "API Open Data"
	SectionPrivateReports    = "API Private Reports"
)

// Allowlist is the set of endpoint templates that the PCM accepts in the
// endpoint field of one report API. It is safe for concurrent use.
type Allowlist struct {
	endpoints []string
	root      *templateNode
	templates map[string]struct{}
}

// templateNode is one path segment of the template trie. A template ends at
// the node whose template field is non-empty.
type templateNode struct {
	literal  map[string]*templateNode
	param    *templateNode
	template string
}

var privateReports = sync.OnceValues(func() (*Allowlist, error) {
	return ParseAllowlist(regulator.OFBEndpointsTSV(), SectionPrivateReports)
})

// PrivateReportsAllowlist returns the embedded allow-list of the private
// report API (section "API Private Reports"). It panics if the embedded file
// does not parse, which the package tests rule out.
func PrivateReportsAllowlist() *Allowlist {
	list, err := privateReports()
	if err != nil {
		panic(err)
	}
	return list
}

// ParseAllowlist parses the tab-separated allow-list and keeps the endpoints
// of the given section. Endpoint strings are kept verbatim, typos included.
// For matching, empty segments are dropped, so the listed
// "/open-banking/payments/v4//consents/{consentId}/pix/payments" matches the
// real path "/open-banking/payments/v4/consents/123/pix/payments". Two
// templates that match the same paths are an error.
func ParseAllowlist(tsv []byte, section string) (*Allowlist, error) {
	list := &Allowlist{root: &templateNode{}, templates: map[string]struct{}{}}
	scanner := bufio.NewScanner(bytes.NewReader(tsv))
	lineNumber := 0
	headerSeen := false
	for scanner.Scan() {
		lineNumber++
		line := strings.TrimRight(scanner.Text(), "\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}

		fields := strings.Split(line, "\t")
		if len(fields) != 3 {
			return nil, fmt.Errorf("allow-list line %d: got %d tab-separated fields, want 3",
				lineNumber, len(fields))
		}
		if !headerSeen {
			if fields[0] != "section" || fields[1] != "family" || fields[2] != "endpoint" {
				return nil, fmt.Errorf("allow-list line %d: invalid header %q", lineNumber, line)
			}
			headerSeen = true
			continue
		}
		if fields[0] != section {
			continue
		}

		if err := list.add(fields[2]); err != nil {
			return nil, fmt.Errorf("allow-list line %d: %w", lineNumber, err)
		}
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("read allow-list: %w", err)
	}
	if len(list.endpoints) == 0 {
		return nil, fmt.Errorf("allow-list has no endpoints in section %q", section)
	}
	return list, nil
}

func (l *Allowlist) add(template string) error {
	if !strings.HasPrefix(template, "/") {
		return fmt.Errorf("endpoint %q does not start with a slash", template)
	}
	if _, ok := l.templates[template]; ok {
		return fmt.Errorf("duplicate endpoint %q", template)
	}

	node := l.root
	for _, segment := range splitPath(template) {
		if strings.HasPrefix(segment, "{") && strings.HasSuffix(segment, "}") {
			if node.param == nil {
				node.param = &templateNode{}
			}
			node = node.param
			continue
		}
		if node.literal == nil {
			node.literal = map[string]*templateNode{}
		}
		next, ok := node.literal[segment]
		if !ok {
			next = &templateNode{}
			node.literal[segment] = next
		}
		node = next
	}
	if node.template != "" {
		return fmt.Errorf("endpoint %q matches the same paths as %q", template, node.template)
	}

	node.template = template
	l.templates[template] = struct{}{}
	l.endpoints = append(l.endpoints, template)
	return nil
}

// Template returns the listed template that matches a real request path, such
// as "/open-banking/accounts/v2/accounts/{accountId}/transactions" for
// "/open-banking/accounts/v2/accounts/123/transactions". A query string,
// fragment, trailing slash, empty segments and any prefix before
// "/open-banking/" are ignored. Each {name} matches one non-empty segment and
// a literal segment wins over a {name} at the same position.
func (l *Allowlist) Template(path string) (template string, ok bool) {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if i := strings.Index(path, "/open-banking/"); i > 0 {
		path = path[i:]
	}

	node := match(l.root, splitPath(path))
	if node == nil {
		return "", false
	}
	return node.template, true
}

// match walks the trie depth first, trying the literal child before the
// {name} child so that the most specific template wins.
func match(node *templateNode, segments []string) *templateNode {
	if len(segments) == 0 {
		if node.template == "" {
			return nil
		}
		return node
	}
	if next, ok := node.literal[segments[0]]; ok {
		if found := match(next, segments[1:]); found != nil {
			return found
		}
	}
	if node.param != nil {
		return match(node.param, segments[1:])
	}
	return nil
}

// Contains reports whether template is listed verbatim.
func (l *Allowlist) Contains(template string) bool {
	_, ok := l.templates[template]
	return ok
}

// Endpoints returns the listed templates in file order.
func (l *Allowlist) Endpoints() []string {
	return append([]string(nil), l.endpoints...)
}

// splitPath returns the non-empty segments of a slash-separated path.
func splitPath(path string) []string {
	return strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
}
