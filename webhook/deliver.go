package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel/attribute"
)

// Delivery states.
const (
	DeliveryPending      = "pending"
	DeliveryDelivered    = "delivered"
	DeliveryDeadLettered = "dead_lettered"
)

// Attempt outcomes stored in webhook_attempts.outcome.
const (
	outcomeDelivered = "delivered"
	outcomeFailed    = "failed"
	outcomeGone      = "gone"
	outcomeTimeout   = "timeout"
	outcomeError     = "error"
)

// Snooze bounds. A delivery waiting for its predecessor snoozes until the
// predecessor's next attempt, at least waitMinimum doubled per earlier
// snooze up to waitMinimumCap, and at most waitMaximum. A finished delivery
// also wakes its successor at once, so these bounds matter only when that
// wake-up is missed. A delivery whose endpoint is at its concurrency limit
// waits up to busyWait in the worker for a free slot, then snoozes for
// busyMinimum doubled per earlier snooze, up to busyMaximum.
const (
	waitMinimum    = 500 * time.Millisecond
	waitMinimumCap = 30 * time.Second
	waitMaximum    = 10 * time.Minute
	busyWait       = 250 * time.Millisecond
	busyMinimum    = 250 * time.Millisecond
	busyMaximum    = 2 * time.Second
)

// drainLimit is how much of a response body beyond the stored part is read,
// so the connection can be reused. A longer body closes the connection.
const drainLimit = 64 << 10

// deliveryWorker sends one HTTP attempt per job run.
type deliveryWorker struct {
	river.WorkerDefaults[DeliveryArgs]
	cfg     *Config
	client  *http.Client
	limiter *endpointLimiter
	logger  *slog.Logger
}

func newDeliveryWorker(cfg *Config) *deliveryWorker {
	return &deliveryWorker{
		cfg:     cfg,
		client:  newHTTPClient(cfg),
		limiter: &endpointLimiter{limit: cfg.EndpointConcurrency, slots: map[string]*endpointSlots{}},
		logger:  cfg.Logger,
	}
}

// Timeout leaves room after the request for the database work of the attempt.
func (w *deliveryWorker) Timeout(*river.Job[DeliveryArgs]) time.Duration {
	return w.cfg.RequestTimeout + 30*time.Second
}

// delivery is a webhook_deliveries row with its message body.
type delivery struct {
	AggregateID    string
	Attempts       int
	Body           []byte
	Ecosystem      string
	EventID        uuid.UUID
	EventType      string
	ID             int64
	Run            int
	State          string
	SubscriptionID uuid.UUID
	TenantID       string
}

var errDeliveryNotFound = errors.New("webhook delivery not found")

// Work runs one step of a delivery: it waits for the predecessor or a free
// endpoint slot by snoozing, or makes one HTTP attempt and records it.
func (w *deliveryWorker) Work(ctx context.Context, job *river.Job[DeliveryArgs]) error {
	err := w.work(ctx, job)
	var snooze *river.JobSnoozeError
	if err == nil || errors.As(err, &snooze) {
		return err
	}
	if errors.Is(err, errDeliveryNotFound) {
		w.logger.Warn("webhook delivery not found; job cancelled", "event", "webhook.delivery_missing",
			"delivery_id", job.Args.DeliveryID, "job_id", job.ID)
		return river.JobCancel(err)
	}
	w.logger.Error("webhook delivery job failed", "event", "webhook.job_failed",
		"delivery_id", job.Args.DeliveryID, "job_id", job.ID, "job_attempt", job.Attempt, "error", err)
	if job.Attempt >= job.MaxAttempts {
		// River discards the job after this, so dead-letter the delivery
		// instead of leaving it pending, where it would hold back later
		// deliveries of its aggregate for ever.
		reason := fmt.Sprintf("internal error after %d job attempts: %v", job.Attempt, err)
		finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if d, loadErr := w.load(finishCtx, job.Args.DeliveryID); loadErr == nil && d.Run == job.Args.Run {
			if dlErr := w.deadLetter(finishCtx, d, reason, "internal_error"); dlErr != nil {
				w.logger.Error("dead-lettering webhook delivery failed", "event", "webhook.dead_letter_failed",
					"delivery_id", d.ID, "error", dlErr)
			}
		}
	}
	return err
}

func (w *deliveryWorker) work(ctx context.Context, job *river.Job[DeliveryArgs]) error {
	d, err := w.load(ctx, job.Args.DeliveryID)
	if err != nil {
		return err
	}
	if d.State != DeliveryPending || d.Run != job.Args.Run {
		return nil // finished, or replaced by a replay's job
	}
	sub, err := getSubscription(ctx, w.cfg.Pool, w.cfg.Secrets, d.SubscriptionID, false)
	if err != nil {
		return err
	}
	if sub.State != StateEnabled {
		return w.deadLetter(ctx, d, "subscription disabled: "+sub.DisabledReason, "subscription_disabled")
	}
	if len(d.Body) > w.cfg.MaxBodyBytes {
		return w.deadLetter(ctx, d, fmt.Sprintf("webhook body is %d bytes, above the %d-byte limit; no request was sent",
			len(d.Body), w.cfg.MaxBodyBytes), "body_too_large")
	}

	if wait, blocked, err := w.predecessorWait(ctx, d, snoozeCount(job)); err != nil {
		return err
	} else if blocked {
		count(ctx, metrics.snoozes, 1, d.Ecosystem, reasonAttr("predecessor"))
		w.logger.Debug("webhook delivery waits for an earlier delivery of its aggregate",
			"event", "webhook.waiting_for_predecessor", "delivery_id", d.ID, "wait", wait)
		return river.JobSnooze(wait)
	}

	release, ok := w.limiter.acquire(ctx, sub.URL, busyWait)
	if !ok {
		wait := backoff(busyMinimum, snoozeCount(job), busyMaximum)
		count(ctx, metrics.snoozes, 1, d.Ecosystem, reasonAttr("endpoint_busy"))
		w.logger.Debug("webhook endpoint at its concurrency limit", "event", "webhook.endpoint_busy",
			"delivery_id", d.ID, "endpoint", endpointHost(sub.URL), "wait", wait)
		return river.JobSnooze(wait)
	}
	defer release()

	attempt, attemptID, err := w.beginAttempt(ctx, d, sub.RetryPolicy.MaxAttempts())
	if err != nil {
		return err
	}
	if attempt == 0 {
		return w.deadLetter(ctx, d, fmt.Sprintf("all %d attempts used", d.Attempts), "attempts_exhausted")
	}

	result := w.send(ctx, d, sub)
	return w.finishAttempt(ctx, d, sub, attempt, attemptID, result)
}

func (w *deliveryWorker) load(ctx context.Context, id int64) (*delivery, error) {
	d := &delivery{}
	err := w.cfg.Pool.QueryRow(ctx, `
		SELECT d.id, d.tenant_id, d.ecosystem, d.subscription_id, d.event_id, d.event_type, d.aggregate_id,
		       d.state, d.run, d.attempts, m.body
		FROM webhook_deliveries d JOIN webhook_messages m ON m.event_id = d.event_id
		WHERE d.id = $1`, id).Scan(&d.ID, &d.TenantID, &d.Ecosystem, &d.SubscriptionID, &d.EventID, &d.EventType,
		&d.AggregateID, &d.State, &d.Run, &d.Attempts, &d.Body)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", errDeliveryNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read webhook delivery %d: %w", id, err)
	}
	return d, nil
}

// predecessorWait reports whether an earlier delivery of the same
// subscription and aggregate is still pending, and if so how long to snooze.
func (w *deliveryWorker) predecessorWait(ctx context.Context, d *delivery, snoozes int) (time.Duration, bool, error) {
	var nextAttemptAt *time.Time
	err := w.cfg.Pool.QueryRow(ctx, `
		SELECT next_attempt_at FROM webhook_deliveries
		WHERE subscription_id = $1 AND aggregate_id = $2 AND state = 'pending' AND id < $3
		ORDER BY id LIMIT 1`, d.SubscriptionID, d.AggregateID, d.ID).Scan(&nextAttemptAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("check earlier deliveries of webhook delivery %d: %w", d.ID, err)
	}
	wait := backoff(waitMinimum, snoozes, waitMinimumCap)
	if nextAttemptAt != nil {
		wait = max(wait, time.Until(*nextAttemptAt))
	}
	return min(wait, waitMaximum), true, nil
}

// beginAttempt counts the attempt and logs its start before the request is
// sent, so a crash mid-request still counts. It returns the attempt number
// and the attempt row, or zero when no attempt is left.
func (w *deliveryWorker) beginAttempt(ctx context.Context, d *delivery, maxAttempts int) (int, int64, error) {
	var attempt int
	var attemptID int64
	err := w.cfg.Pool.QueryRow(ctx, `
		WITH counted AS (
			UPDATE webhook_deliveries SET attempts = attempts + 1, updated_at = now()
			WHERE id = $1 AND run = $2 AND state = 'pending' AND attempts < $3
			RETURNING tenant_id, ecosystem, attempts
		)
		INSERT INTO webhook_attempts (tenant_id, ecosystem, delivery_id, run, attempt)
		SELECT tenant_id, ecosystem, $1, $2, attempts FROM counted
		RETURNING attempt, id`, d.ID, d.Run, maxAttempts).Scan(&attempt, &attemptID)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("record attempt of webhook delivery %d: %w", d.ID, err)
	}
	return attempt, attemptID, nil
}

// attemptResult is the outcome of one HTTP attempt.
type attemptResult struct {
	body      []byte
	err       error
	header    http.Header
	latency   time.Duration
	outcome   string
	status    int
	truncated bool
}

// send makes the HTTP request, signed at the time of sending.
func (w *deliveryWorker) send(ctx context.Context, d *delivery, sub *Subscription) attemptResult {
	request, err := http.NewRequestWithContext(ctx, http.MethodPost, sub.URL, bytes.NewReader(d.Body))
	if err != nil {
		return attemptResult{outcome: outcomeError, err: fmt.Errorf("build request: %w", withoutURL(err))}
	}
	if err := setSignedHeaders(request.Header, sub.Secrets, d.EventID.String(), time.Now(), d.Body); err != nil {
		return attemptResult{outcome: outcomeError, err: err}
	}

	start := time.Now()
	response, err := w.client.Do(request)
	if err != nil {
		result := attemptResult{outcome: outcomeError, err: withoutURL(err), latency: time.Since(start)}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err) {
			result.outcome = outcomeTimeout
		}
		return result
	}
	defer response.Body.Close()

	body, readErr := io.ReadAll(io.LimitReader(response.Body, int64(w.cfg.ResponseBodyBytes)+1))
	result := attemptResult{status: response.StatusCode, header: response.Header}
	if len(body) > w.cfg.ResponseBodyBytes {
		body, result.truncated = body[:w.cfg.ResponseBodyBytes], true
		_, _ = io.Copy(io.Discard, io.LimitReader(response.Body, drainLimit))
	}
	result.body = body
	result.latency = time.Since(start)

	switch {
	case response.StatusCode >= 200 && response.StatusCode < 300:
		result.outcome = outcomeDelivered
		if readErr != nil {
			// The 2xx status is the receiver's acknowledgement, whatever the body.
			result.err = fmt.Errorf("read response body: %w", withoutURL(readErr))
		}
	case response.StatusCode == http.StatusGone:
		result.outcome = outcomeGone
	default:
		result.outcome = outcomeFailed
		if response.StatusCode >= 300 && response.StatusCode < 400 {
			result.err = fmt.Errorf("response is a redirect (status %d), and redirects are not followed", response.StatusCode)
		}
	}
	return result
}

func isTimeout(err error) bool {
	var timeout interface{ Timeout() bool }
	return errors.As(err, &timeout) && timeout.Timeout()
}

// withoutURL drops the URL that net/http puts in its errors, since a URL's
// path or query can hold a customer's token.
func withoutURL(err error) error {
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		return fmt.Errorf("%s: %w", urlErr.Op, urlErr.Err)
	}
	return err
}

// finishAttempt records the attempt's result and moves the delivery on:
// delivered, dead-lettered, or snoozed until its next attempt.
func (w *deliveryWorker) finishAttempt(ctx context.Context, d *delivery, sub *Subscription, attempt int,
	attemptID int64, result attemptResult) error {
	ctx = context.WithoutCancel(ctx) // record the attempt even when the job was cancelled mid-request
	errorText := ""
	if result.err != nil {
		errorText = result.err.Error()
	}
	var status *int
	if result.status != 0 {
		status = &result.status
	}
	log := w.logger.With("delivery_id", d.ID, "event_id", d.EventID, "subscription_id", sub.ID,
		"endpoint", endpointHost(sub.URL), "attempt", attempt, "run", d.Run, "status", result.status,
		"latency_ms", result.latency.Milliseconds())
	count(ctx, metrics.attempts, 1, d.Ecosystem,
		attribute.String("outcome", result.outcome), attribute.String("status_class", statusClass(result.status)))
	metrics.attemptTime.Record(ctx, result.latency.Seconds(), attrs(d.Ecosystem))

	var (
		next      string // "delivered", "gone", "retry" or "dead_lettered"
		snoozeFor time.Duration
	)
	err := pgx.BeginFunc(ctx, w.cfg.Pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			UPDATE webhook_attempts
			SET outcome = $2, status_code = $3, latency_ms = $4, error = nullif($5, ''), response_body = $6,
			    response_truncated = $7, finished_at = now()
			WHERE id = $1`,
			attemptID, result.outcome, status, float64(result.latency.Microseconds())/1000, errorText, result.body,
			result.truncated)
		if err != nil {
			return fmt.Errorf("record attempt %d of webhook delivery %d: %w", attempt, d.ID, err)
		}

		switch result.outcome {
		case outcomeDelivered:
			next = "delivered"
			_, err := tx.Exec(ctx, `
				UPDATE webhook_deliveries
				SET state = 'delivered', last_status = $3, last_error = NULL, next_attempt_at = NULL,
				    finished_at = now(), updated_at = now()
				WHERE id = $1 AND run = $2 AND state = 'pending'`, d.ID, d.Run, status)
			if err != nil {
				return fmt.Errorf("mark webhook delivery %d delivered: %w", d.ID, err)
			}
			return nil

		case outcomeGone:
			next = "gone"
			reason := "the endpoint returned 410 Gone"
			if _, err := disableTx(ctx, tx, w.cfg.Secrets, sub.ID, SystemActor, reason); err != nil {
				return err
			}
			return deadLetterTx(ctx, tx, d, status, reason+"; the subscription was disabled")
		}

		delay, retry := nextDelay(sub.RetryPolicy, attempt, result.status, result.header, time.Now(), w.cfg.MaxRetryAfter)
		if !retry {
			next = "dead_lettered"
			return deadLetterTx(ctx, tx, d, status, fmt.Sprintf("all %d attempts failed; the last one: %s",
				attempt, describe(result)))
		}
		next, snoozeFor = "retry", delay
		_, err = tx.Exec(ctx, `
			UPDATE webhook_deliveries
			SET last_status = $3, last_error = $4, next_attempt_at = now() + $5::interval, updated_at = now()
			WHERE id = $1 AND run = $2 AND state = 'pending'`, d.ID, d.Run, status, describe(result), delay)
		if err != nil {
			return fmt.Errorf("schedule the next attempt of webhook delivery %d: %w", d.ID, err)
		}
		return nil
	})
	if err != nil {
		return err
	}

	switch next {
	case "delivered":
		count(ctx, metrics.deliveries, 1, d.Ecosystem)
		log.Info("webhook delivered", "event", "webhook.delivered")
		w.wakeSuccessor(ctx, d)
	case "gone":
		count(ctx, metrics.subsDisabled, 1, d.Ecosystem)
		count(ctx, metrics.deadLetters, 1, d.Ecosystem, reasonAttr("gone"))
		log.Warn("endpoint returned 410 Gone, so the subscription was disabled and the delivery dead-lettered",
			"event", "webhook.subscription_disabled")
		w.wakeSuccessor(ctx, d)
	case "retry":
		count(ctx, metrics.retries, 1, d.Ecosystem)
		log.Warn("webhook attempt failed; will retry", "event", "webhook.attempt_failed",
			"outcome", result.outcome, "error", errorText, "retry_in", snoozeFor)
		return river.JobSnooze(snoozeFor)
	default:
		count(ctx, metrics.deadLetters, 1, d.Ecosystem, reasonAttr("attempts_exhausted"))
		log.Error("webhook delivery dead-lettered after its last attempt", "event", "webhook.dead_lettered",
			"outcome", result.outcome, "error", errorText)
		w.wakeSuccessor(ctx, d)
	}
	return nil
}

// describe summarises a failed attempt for last_error and dead-letter
// reasons.
func describe(result attemptResult) string {
	switch {
	case result.status != 0 && result.err != nil:
		return fmt.Sprintf("status %d: %v", result.status, result.err)
	case result.status != 0:
		return fmt.Sprintf("status %d", result.status)
	case result.err != nil:
		return fmt.Sprintf("%s: %v", result.outcome, result.err)
	default:
		return result.outcome
	}
}

// deadLetter dead-letters d outside an attempt and wakes its successor.
func (w *deliveryWorker) deadLetter(ctx context.Context, d *delivery, reason, reasonClass string) error {
	err := pgx.BeginFunc(ctx, w.cfg.Pool, func(tx pgx.Tx) error {
		return deadLetterTx(ctx, tx, d, nil, reason)
	})
	if err != nil {
		return err
	}
	count(ctx, metrics.deadLetters, 1, d.Ecosystem, reasonAttr(reasonClass))
	w.logger.Error("webhook delivery dead-lettered", "event", "webhook.dead_lettered", "delivery_id", d.ID,
		"event_id", d.EventID, "subscription_id", d.SubscriptionID, "reason", reason)
	w.wakeSuccessor(ctx, d)
	return nil
}

// deadLetterTx marks d dead-lettered and writes a dead_letters row, unless
// d is no longer pending in its run.
func deadLetterTx(ctx context.Context, tx pgx.Tx, d *delivery, status *int, reason string) error {
	tag, err := tx.Exec(ctx, `
		UPDATE webhook_deliveries
		SET state = 'dead_lettered', dead_letter_reason = $3, last_status = coalesce($4, last_status),
		    next_attempt_at = NULL, finished_at = now(), updated_at = now()
		WHERE id = $1 AND run = $2 AND state = 'pending'`, d.ID, d.Run, reason, status)
	if err != nil {
		return fmt.Errorf("dead-letter webhook delivery %d: %w", d.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return nil
	}
	_, err = tx.Exec(ctx, `
		INSERT INTO dead_letters (tenant_id, ecosystem, source, event_id, reason)
		VALUES ($1, $2, $3, $4, $5)`,
		d.TenantID, d.Ecosystem, ConsumerName, d.EventID, fmt.Sprintf("webhook delivery %d: %s", d.ID, reason))
	if err != nil {
		return fmt.Errorf("write dead letter of webhook delivery %d: %w", d.ID, err)
	}
	return nil
}

// wakeSuccessor makes the job of the next pending delivery of d's
// subscription and aggregate available now, so it does not sleep out its
// snooze. River does not change a running job, so the wake-up is tried a few
// more times over about 1.5 seconds. After that the job's own snooze bound
// applies.
func (w *deliveryWorker) wakeSuccessor(ctx context.Context, d *delivery) {
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return // no River client: called outside a job
	}
	var jobID *int64
	err = w.cfg.Pool.QueryRow(ctx, `
		SELECT job_id FROM webhook_deliveries
		WHERE subscription_id = $1 AND aggregate_id = $2 AND state = 'pending' AND id > $3
		ORDER BY id LIMIT 1`, d.SubscriptionID, d.AggregateID, d.ID).Scan(&jobID)
	if err != nil || jobID == nil {
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			w.logger.Warn("finding the next webhook delivery failed", "event", "webhook.wake_failed",
				"delivery_id", d.ID, "error", err)
		}
		return
	}
	delay := 25 * time.Millisecond
	for range 6 {
		job, err := client.JobRetry(ctx, *jobID)
		if err != nil {
			w.logger.Warn("waking the next webhook delivery failed", "event", "webhook.wake_failed",
				"delivery_id", d.ID, "job_id", *jobID, "error", err)
			return
		}
		if job.State != "running" {
			w.logger.Debug("woke the next webhook delivery", "event", "webhook.woke_successor",
				"delivery_id", d.ID, "job_id", *jobID, "job_state", job.State)
			return
		}
		time.Sleep(delay)
		delay *= 2
	}
}

// snoozeCount returns how often River has snoozed the job.
func snoozeCount(job *river.Job[DeliveryArgs]) int {
	var metadata struct {
		Snoozes int `json:"snoozes"`
	}
	_ = json.Unmarshal(job.Metadata, &metadata)
	return metadata.Snoozes
}

// backoff returns minimum doubled per earlier snooze, capped at maximum, with
// up to 25% of random jitter added.
func backoff(minimum time.Duration, snoozes int, maximum time.Duration) time.Duration {
	wait := minimum
	for i := 0; i < snoozes && wait < maximum; i++ {
		wait *= 2
	}
	wait = min(wait, maximum)
	return wait + time.Duration(rand.Int64N(int64(wait)/4+1))
}

// endpointHost returns the host of an endpoint URL, which is what logs show
// of it.
func endpointHost(raw string) string {
	parsed, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	return parsed.Host
}

// endpointLimiter caps the requests in flight to each endpoint URL within
// this process.
type endpointLimiter struct {
	mu    sync.Mutex
	slots map[string]*endpointSlots
	limit int
}

type endpointSlots struct {
	free  chan struct{}
	users int // goroutines holding or waiting for a slot
}

// acquire waits up to wait for a free slot of endpoint. It returns the
// release function, or false when no slot freed up in time.
func (l *endpointLimiter) acquire(ctx context.Context, endpoint string, wait time.Duration) (func(), bool) {
	l.mu.Lock()
	slots := l.slots[endpoint]
	if slots == nil {
		slots = &endpointSlots{free: make(chan struct{}, l.limit)}
		for range l.limit {
			slots.free <- struct{}{}
		}
		l.slots[endpoint] = slots
	}
	slots.users++
	l.mu.Unlock()

	done := func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		slots.users--
		if slots.users == 0 {
			delete(l.slots, endpoint)
		}
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-slots.free:
		return func() {
			slots.free <- struct{}{}
			done()
		}, true
	case <-timer.C:
	case <-ctx.Done():
	}
	done()
	return nil, false
}
