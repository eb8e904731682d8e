package chaos_test

import (
	"fmt"
	"strings"
)

// formatDetails renders name-value pairs as "name=value" words.
func formatDetails(pairs ...any) string {
	var words []string
	for i := 0; i+1 < len(pairs); i += 2 {
		words = append(words, fmt.Sprintf("%v=%v", pairs[i], pairs[i+1]))
	}
	return strings.Join(words, " ")
}
