//go:build !chaos

package chaos_test

import "time"

// Short fault durations, for the default test run.
var durations = scenarioDurations{
	Mode:                "short",
	Load:                4 * time.Second,
	LoadRate:            100,
	Outage:              3 * time.Second,
	Stall:               10 * time.Second,
	Throttle:            8 * time.Second,
	SettleTimeout:       150 * time.Second,
	JobTimeout:          10 * time.Second,
	RescueAfter:         15 * time.Second,
	ReadBackDelay:       2 * time.Second,
	WebhookTimeout:      2 * time.Second,
	FlushBurstPerTenant: 200,
}
