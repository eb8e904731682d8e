// Package businessday computes a regulator's business days and deadlines as
// UTC instants from a time zone's rules, including days on which daylight
// saving time skips or repeats an hour.
package businessday

import (
	"fmt"
	"time"

	// The zone rules ship in the binary, so a machine without tzdata
	// computes the same deadlines.
	_ "time/tzdata"
)

// Date is a calendar day without a time zone.
type Date struct {
	Year  int
	Month time.Month
	Day   int
}

// ParseDate parses "2006-01-02".
func ParseDate(text string) (Date, error) {
	t, err := time.Parse(time.DateOnly, text)
	if err != nil {
		return Date{}, fmt.Errorf("invalid day %q: want YYYY-MM-DD", text)
	}
	return Date{t.Year(), t.Month(), t.Day()}, nil
}

// String returns the date as "2006-01-02".
func (d Date) String() string { return fmt.Sprintf("%04d-%02d-%02d", d.Year, d.Month, d.Day) }

// AddDays returns the date n days later (earlier for negative n).
func (d Date) AddDays(n int) Date {
	t := time.Date(d.Year, d.Month, d.Day+n, 12, 0, 0, 0, time.UTC)
	return Date{t.Year(), t.Month(), t.Day()}
}

// Before reports whether d is earlier than other.
func (d Date) Before(other Date) bool {
	if d.Year != other.Year {
		return d.Year < other.Year
	}
	if d.Month != other.Month {
		return d.Month < other.Month
	}
	return d.Day < other.Day
}

// DefaultZone is the regulators' zone: Brasília time.
const DefaultZone = "America/Sao_Paulo"

// DefaultCutoffHour is the local hour on D+1 by which day D's reports are due.
const DefaultCutoffHour = 8

// Calendar maps instants to a regulator's business days and deadlines.
type Calendar struct {
	// CutoffHour is the local hour of D+1 by which day D's reports are due.
	CutoffHour int

	// Location is the regulator's zone.
	Location *time.Location
}

// NewCalendar loads zone (empty means DefaultZone) with the default cut-off.
func NewCalendar(zone string) (Calendar, error) {
	if zone == "" {
		zone = DefaultZone
	}
	location, err := time.LoadLocation(zone)
	if err != nil {
		return Calendar{}, fmt.Errorf("load regulator zone %q: %w", zone, err)
	}
	return Calendar{CutoffHour: DefaultCutoffHour, Location: location}, nil
}

// Day returns the business day t falls on.
func (c Calendar) Day(t time.Time) Date {
	local := t.In(c.Location)
	return Date{local.Year(), local.Month(), local.Day()}
}

// Start returns the first instant of day d. Where the zone skips local
// midnight, the day starts when the skipped hour ends.
func (c Calendar) Start(d Date) time.Time {
	return c.instant(d, 0)
}

// Cutoff returns the deadline of day d: CutoffHour on the next day, local
// time. A skipped hour moves it to the end of the gap; a repeated hour takes
// its first occurrence, the earlier and so stricter instant.
func (c Calendar) Cutoff(d Date) time.Time {
	return c.instant(d.AddDays(1), c.CutoffHour)
}

// Expiry returns when the first reports of day d become older than maxAge,
// after which a regulator discards them.
func (c Calendar) Expiry(d Date, maxAge time.Duration) time.Time {
	return c.Start(d).Add(maxAge)
}

// instant returns the first instant whose local wall clock reads hour:00 on
// day d, or, when the zone skips that wall time, the instant the gap ends.
func (c Calendar) instant(d Date, hour int) time.Time {
	naive := time.Date(d.Year, d.Month, d.Day, hour, 0, 0, 0, time.UTC)

	var best time.Time
	found := false
	// The offsets in force a day and a half before and after cover both sides
	// of any single transition near the wall time.
	for _, probe := range []time.Time{naive.Add(-36 * time.Hour), naive.Add(36 * time.Hour)} {
		_, offset := probe.In(c.Location).Zone()
		candidate := naive.Add(-time.Duration(offset) * time.Second)
		local := candidate.In(c.Location)
		if local.Year() == d.Year && local.Month() == d.Month && local.Day() == d.Day &&
			local.Hour() == hour && local.Minute() == 0 && local.Second() == 0 {
			if !found || candidate.Before(best) {
				best, found = candidate, true
			}
		}
	}
	if found {
		return best
	}

	// The wall time is skipped: with the offset in force before the gap,
	// the candidate lands after the transition, and its zone period starts
	// where the gap ends.
	_, offset := naive.Add(-36 * time.Hour).In(c.Location).Zone()
	start, _ := naive.Add(-time.Duration(offset) * time.Second).In(c.Location).ZoneBounds()
	return start.UTC()
}
