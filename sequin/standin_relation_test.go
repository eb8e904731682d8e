package sequin

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseTimestamptz(t *testing.T) {
	t.Parallel()

	cases := []struct {
		text string
		want time.Time
	}{
		{"2025-03-14 09:26:53.581204+00", time.Date(2025, 3, 14, 9, 26, 53, 581204000, time.UTC)},
		{"2025-03-14 09:26:53+00", time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)},
		{"2025-03-14 09:26:53.5+00", time.Date(2025, 3, 14, 9, 26, 53, 500000000, time.UTC)},
		{"2025-03-14 06:26:53.581204-03", time.Date(2025, 3, 14, 9, 26, 53, 581204000, time.UTC)},
		{"2025-03-14 14:56:53.581204+05:30", time.Date(2025, 3, 14, 9, 26, 53, 581204000, time.UTC)},
	}
	for _, tc := range cases {
		got, err := parseTimestamptz([]byte(tc.text))
		require.NoError(t, err, tc.text)
		require.Equal(t, tc.want, got, tc.text)
	}

	for _, text := range []string{"infinity", "-infinity", "2025-03-14 09:26:53+00 BC", ""} {
		_, err := parseTimestamptz([]byte(text))
		require.Error(t, err, text)
	}
}
