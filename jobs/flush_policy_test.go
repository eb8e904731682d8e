package jobs

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/businessday"
	"github.com/finnest/eventruntime/tenant"
)

func TestScheduleDue(t *testing.T) {
	t.Parallel()
	calendar, err := businessday.NewCalendar("America/Sao_Paulo")
	require.NoError(t, err)
	// 02:30 local on 2026-12-04.
	now := time.Date(2026, 12, 4, 5, 30, 0, 0, time.UTC)

	cases := []struct {
		name       string
		start, end time.Duration
		last       time.Time
		want       bool
	}{
		{"WholeDayNeverFlushed", 0, 0, time.Time{}, true},
		{"InsideWindow", 2 * time.Hour, 3 * time.Hour, time.Time{}, true},
		{"BeforeWindow", 3 * time.Hour, 4 * time.Hour, time.Time{}, false},
		{"WindowWrapsMidnight", 22 * time.Hour, 3 * time.Hour, time.Time{}, true},
		{"OutsideWrappedWindow", 22 * time.Hour, 2 * time.Hour, time.Time{}, false},
		{"CadenceNotYetPassed", 0, 0, now.Add(-30 * time.Minute), false},
		{"CadencePassed", 0, 0, now.Add(-time.Hour), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			config := &tenant.Config{ScheduleWindowStart: tc.start, ScheduleWindowEnd: tc.end,
				ScheduleCadence: time.Hour, LastFlushedAt: tc.last}
			require.Equal(t, tc.want, scheduleDue(calendar, config, now))
		})
	}
}

func TestUrgentBefore(t *testing.T) {
	t.Parallel()
	calendar, err := businessday.NewCalendar("America/Sao_Paulo")
	require.NoError(t, err)
	day := businessday.Date{Year: 2026, Month: time.December, Day: 3}
	cutoff := calendar.Cutoff(day) // 08:00 on 12-04 local

	// Before the margin, day D is not urgent yet: only days before it are.
	require.Equal(t, calendar.Start(day), UrgentBefore(calendar, 2*time.Hour, cutoff.Add(-2*time.Hour-time.Second)))
	// From the margin on, all of day D is urgent.
	require.Equal(t, calendar.Start(day.AddDays(1)), UrgentBefore(calendar, 2*time.Hour, cutoff.Add(-2*time.Hour)))
	require.Equal(t, calendar.Start(day.AddDays(1)), UrgentBefore(calendar, 2*time.Hour, cutoff.Add(time.Hour)))
}

func TestDiscardClass(t *testing.T) {
	t.Parallel()
	require.Equal(t, "too_old", discardClass("Report timestamp is more than 7 days old"))
	require.Equal(t, "future_timestamp", discardClass("Report timestamp is more than 5 minutes in the future"))
	require.Equal(t, "organisation_mismatch", discardClass("Organisation does not match the token"))
	require.Equal(t, "other", discardClass("something else"))
}
