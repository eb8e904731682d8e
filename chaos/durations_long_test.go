//go:build chaos

package chaos_test

import "time"

// Long fault durations, for `make chaos`.
var durations = scenarioDurations{
	Mode:                "long",
	Load:                30 * time.Second,
	LoadRate:            200,
	Outage:              time.Minute,
	Stall:               3 * time.Minute,
	Throttle:            3 * time.Minute,
	SettleTimeout:       10 * time.Minute,
	JobTimeout:          30 * time.Second,
	RescueAfter:         45 * time.Second,
	ReadBackDelay:       10 * time.Second,
	WebhookTimeout:      5 * time.Second,
	FlushBurstPerTenant: 2000,
}
