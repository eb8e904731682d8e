package chaos_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/outbox"
)

// load is a producer appending interaction events at a steady rate. A failed
// append is retried with the same event ids until it commits, and when the
// failure left the outcome unknown (the database died during COMMIT), the
// outbox is checked before appending again.
type load struct {
	env       *env
	generator *demo.Generator
	stopCh    chan struct{}
	done      chan struct{}

	mu        sync.Mutex
	committed []uuid.UUID
	failures  int
}

func (e *env) startLoad(seed uint64, rate int) *load {
	l := &load{env: e, generator: demo.NewGenerator(seed, e.tenants), stopCh: make(chan struct{}), done: make(chan struct{})}
	go l.run(max(1, rate/20))
	e.t.Cleanup(l.stop)
	return l
}

func (l *load) run(perTick int) {
	defer close(l.done)
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	var pending []*outbox.Event
	for {
		select {
		case <-l.stopCh:
			return
		case <-ticker.C:
		}
		if pending == nil {
			pending = l.env.interactionEvents(l.generator, perTick)
		} else if l.exists(pending[0].ID) {
			l.record(pending)
			pending = nil
			continue
		}
		if err := l.env.appendEvents(pending...); err != nil {
			l.mu.Lock()
			l.failures++
			l.mu.Unlock()
			continue
		}
		l.record(pending)
		pending = nil
	}
}

// exists reports whether an event of a failed append is in the outbox after
// all. An unreachable database counts as no.
func (l *load) exists(id uuid.UUID) bool {
	return l.env.tryCount("SELECT count(*) FROM outbox WHERE id = $1", id) == 1
}

func (l *load) record(events []*outbox.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, event := range events {
		l.committed = append(l.committed, event.ID)
	}
}

// stop stops the producer and waits for its last append to return.
func (l *load) stop() {
	select {
	case <-l.stopCh:
	default:
		close(l.stopCh)
	}
	<-l.done
}

// committedIDs returns the ids of the events whose append committed.
func (l *load) committedIDs() []uuid.UUID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uuid.UUID(nil), l.committed...)
}

// appendFailures returns how many appends failed and were retried.
func (l *load) appendFailures() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures
}

// outcome is what a scenario's verdict checks.
type outcome struct {
	// events is the number of version-1 interaction events in the outbox,
	// the events the regulator must receive.
	events int

	// lost counts events the regulator never accepted, plus events whose
	// append committed but which are missing from the outbox.
	lost int

	// duplicates counts extra copies the regulator saw of an interaction,
	// plus report items with more than one receipt.
	duplicates int

	// stuck counts report items without a final state and export batches
	// never finished.
	stuck int

	// recovery is the time from the end of the fault until every event
	// had its final outcome, and drain the time from the call to settle,
	// after the producers stopped.
	recovery time.Duration
	drain    time.Duration
}

// settle waits until every interaction event in the outbox has a final
// report item and every export batch is finished, or until the timeout,
// and returns the outcome. faultEnded is when the fault was lifted.
func (e *env) settle(faultEnded time.Time, committed []uuid.UUID) outcome {
	e.t.Helper()
	started := time.Now()
	deadline := started.Add(durations.SettleTimeout)
	var settledAt time.Time
	for time.Now().Before(deadline) {
		expected := e.tryCount(`SELECT count(*) FROM outbox
			WHERE event_type = 'pcm.interaction.recorded' AND event_version = 1`)
		final := e.tryCount(`SELECT count(*) FROM report_items
			WHERE state IN ('accepted', 'discarded', 'quarantined', 'rejected')`)
		open := e.tryCount("SELECT count(*) FROM export_batches WHERE finished_at IS NULL")
		if expected >= 0 && final == expected && open == 0 {
			settledAt = time.Now()
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if settledAt.IsZero() {
		settledAt = time.Now()
	}

	result := outcome{recovery: settledAt.Sub(faultEnded), drain: settledAt.Sub(started)}
	rows, err := e.pool.Query(context.Background(), `
		SELECT payload->>'fapiInteractionId' FROM outbox
		WHERE event_type = 'pcm.interaction.recorded' AND event_version = 1`)
	require.NoError(e.t, err)
	var fapiIDs []string
	for rows.Next() {
		var id string
		require.NoError(e.t, rows.Scan(&id))
		fapiIDs = append(fapiIDs, id)
	}
	require.NoError(e.t, rows.Err())
	result.events = len(fapiIDs)
	for _, id := range fapiIDs {
		switch seen := e.fake.Seen(id); {
		case seen == 0:
			result.lost++
		case seen > 1:
			result.duplicates += seen - 1
		}
	}
	if len(committed) > 0 {
		result.lost += len(committed) - e.count("SELECT count(DISTINCT id) FROM outbox WHERE id = ANY($1)", committed)
	}
	result.lost += e.count(`SELECT count(*) FROM report_items
		WHERE state IN ('discarded', 'quarantined', 'rejected')`)
	result.duplicates += e.count(`SELECT count(*) FROM (
		SELECT report_item_id FROM submission_receipts GROUP BY report_item_id HAVING count(*) > 1) d`)
	result.stuck = e.count(`SELECT count(*) FROM report_items
			WHERE state NOT IN ('accepted', 'discarded', 'quarantined', 'rejected')`) +
		e.count("SELECT count(*) FROM export_batches WHERE finished_at IS NULL")
	return result
}

// verdict prints the scenario's verdict line and fails the test unless no
// event was lost or duplicated, nothing is stuck and the regulator saw only
// valid requests. details are extra measurements for the line.
func (e *env) verdict(name string, result outcome, details string) {
	e.t.Helper()
	pass := result.lost == 0 && result.duplicates == 0 && result.stuck == 0 && result.events > 0 &&
		len(e.fake.Violations()) == 0
	status := "PASS"
	if !pass {
		status = "FAIL"
	}
	line := fmt.Sprintf("chaos: %s: %s mode=%s events=%d lost=%d duplicates=%d stuck=%d recovery=%s drain=%s",
		name, status, durations.Mode, result.events, result.lost, result.duplicates, result.stuck,
		result.recovery.Round(100*time.Millisecond), result.drain.Round(100*time.Millisecond))
	if details != "" {
		line += " " + details
	}
	fmt.Println(line)
	e.t.Log(line)

	require.Positive(e.t, result.events, "the scenario produced no interaction events")
	require.Zero(e.t, result.lost, "lost events")
	require.Zero(e.t, result.duplicates, "duplicate submissions")
	require.Zero(e.t, result.stuck, "items or batches without a final state")
	require.Empty(e.t, e.fake.Violations(), "requests the fake regulator found invalid")
}
