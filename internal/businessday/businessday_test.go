package businessday_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/businessday"
)

func mustCalendar(t *testing.T, zone string) businessday.Calendar {
	t.Helper()
	calendar, err := businessday.NewCalendar(zone)
	require.NoError(t, err)
	return calendar
}

func utc(text string) time.Time {
	t, err := time.Parse(time.RFC3339, text)
	if err != nil {
		panic(err)
	}
	return t
}

func TestCalendarSaoPaulo(t *testing.T) {
	t.Parallel()
	calendar := mustCalendar(t, "America/Sao_Paulo")
	day := businessday.Date{Year: 2026, Month: time.December, Day: 3}

	require.Equal(t, utc("2026-12-03T03:00:00Z"), calendar.Start(day))
	require.Equal(t, utc("2026-12-04T11:00:00Z"), calendar.Cutoff(day))
	require.Equal(t, day, calendar.Day(utc("2026-12-04T02:59:59Z")), "21:59 local is still day D")
	require.Equal(t, day.AddDays(1), calendar.Day(utc("2026-12-04T03:00:00Z")))
	require.Equal(t, utc("2026-12-10T03:00:00Z"), calendar.Expiry(day, 7*24*time.Hour))
}

// Brazil observed daylight saving time until 2019, switching at local
// midnight: on 2018-11-04 the clock jumped from 00:00 to 01:00, and on
// 2019-02-17 it went back from 00:00 to 23:00 of the day before.
func TestCalendarSkippedMidnight(t *testing.T) {
	t.Parallel()
	calendar := mustCalendar(t, "America/Sao_Paulo")
	skipped := businessday.Date{Year: 2018, Month: time.November, Day: 4}

	start := calendar.Start(skipped)
	require.Equal(t, utc("2018-11-04T03:00:00Z"), start, "the day starts when the skipped hour ends")
	require.Equal(t, 1, start.In(calendar.Location).Hour())
	require.Equal(t, skipped, calendar.Day(start))
	require.Equal(t, skipped.AddDays(-1), calendar.Day(start.Add(-time.Nanosecond)))
	require.Equal(t, 23*time.Hour, calendar.Start(skipped.AddDays(1)).Sub(start), "the day is 23 hours long")

	// The cut-off of the day before falls on the short day, at 08:00 summer
	// time.
	require.Equal(t, utc("2018-11-04T10:00:00Z"), calendar.Cutoff(skipped.AddDays(-1)))
}

func TestCalendarRepeatedHour(t *testing.T) {
	t.Parallel()
	calendar := mustCalendar(t, "America/Sao_Paulo")
	long := businessday.Date{Year: 2019, Month: time.February, Day: 16}

	require.Equal(t, utc("2019-02-16T02:00:00Z"), calendar.Start(long))
	next := calendar.Start(long.AddDays(1))
	require.Equal(t, utc("2019-02-17T03:00:00Z"), next)
	require.Equal(t, 25*time.Hour, next.Sub(calendar.Start(long)), "the day with the repeated hour is 25 hours long")

	// Both occurrences of 23:30 belong to day 16.
	require.Equal(t, long, calendar.Day(utc("2019-02-17T01:30:00Z")))
	require.Equal(t, long, calendar.Day(utc("2019-02-17T02:30:00Z")))
}

func TestCalendarRepeatedCutoffTakesFirstOccurrence(t *testing.T) {
	t.Parallel()
	// America/New_York repeats 01:00-02:00 on 2026-11-01; a 01:00 cut-off
	// takes the first, earlier occurrence.
	calendar := mustCalendar(t, "America/New_York")
	calendar.CutoffHour = 1
	day := businessday.Date{Year: 2026, Month: time.October, Day: 31}
	require.Equal(t, utc("2026-11-01T05:00:00Z"), calendar.Cutoff(day))
}

func TestCalendarSkippedCutoff(t *testing.T) {
	t.Parallel()
	// America/New_York skips 02:00-03:00 on 2026-03-08; a 02:00 cut-off
	// moves to the end of the gap, 03:00 daylight time.
	calendar := mustCalendar(t, "America/New_York")
	calendar.CutoffHour = 2
	day := businessday.Date{Year: 2026, Month: time.March, Day: 7}
	require.Equal(t, utc("2026-03-08T07:00:00Z"), calendar.Cutoff(day))
}

func TestParseDate(t *testing.T) {
	t.Parallel()
	day, err := businessday.ParseDate("2026-12-03")
	require.NoError(t, err)
	require.Equal(t, "2026-12-03", day.String())
	_, err = businessday.ParseDate("03/12/2026")
	require.ErrorContains(t, err, "want YYYY-MM-DD")
	_, err = businessday.NewCalendar("Mars/Olympus")
	require.ErrorContains(t, err, "Mars/Olympus")
}
