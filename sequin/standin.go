package sequin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/nats-io/nats.go"

	"github.com/finnest/eventruntime/outbox"
)

// Defaults of StandInConfig.
const (
	DefaultPublication    = "eventruntime_outbox"
	DefaultSlot           = "eventruntime_sequin"
	DefaultStatusInterval = 10 * time.Second
	DefaultRetryInterval  = time.Second

	// StandInConsumerName is the consumer.name the stand-in writes in
	// metadata, the name of the NATS sink in sequin.yaml.
	StandInConsumerName = "outbox-nats"
)

const (
	maxRetryInterval = 30 * time.Second

	// flushEveryRows bounds how many rows are published between NATS flushes
	// while rows keep arriving. Each flush costs one round trip to the server.
	flushEveryRows = 2000

	// idleFlushDelay is how long the stand-in waits for more replication data
	// before it flushes NATS and confirms what it has published.
	idleFlushDelay = 5 * time.Millisecond

	stopTimeout = 5 * time.Second
)

// slotNamePattern matches the replication slot names PostgreSQL accepts.
var slotNamePattern = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// publicationNamePattern restricts publication names to unquoted identifiers,
// so they can be written into the START_REPLICATION command.
var publicationNamePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// errNATSDisconnected makes a session wait for the NATS client to reconnect.
var errNATSDisconnected = errors.New("NATS connection is not connected")

// StandInConfig configures a StandIn. The zero value of each optional field
// means its default.
type StandInConfig struct {
	// DatabaseName is the database name in subjects and in
	// metadata.database_name, as Sequin's database name would be. Empty means
	// the database name in DatabaseURL. Avoid dots in it.
	DatabaseName string

	// DatabaseURL is a PostgreSQL connection string, URL or key=value form,
	// for a user with the REPLICATION attribute. The stand-in adds
	// replication=database and sets the session time zone to UTC. Required.
	DatabaseURL string

	// Drop, when set, is called with each row before it is published. When it
	// returns true the row is not published but still confirmed, as if the
	// transport lost it. It is a hook for tests.
	Drop func(event outbox.Event) bool

	// Logger receives the stand-in's logs. Nil means slog.Default().
	Logger *slog.Logger

	// NATS is the connection rows are published on with core NATS. Required.
	// The stand-in does not close it.
	NATS *nats.Conn

	// Publication is the publication the slot streams. Default
	// DefaultPublication.
	Publication string

	// RetryInterval is the wait before the first retry after a failure. It
	// doubles on each further failure up to 30 seconds. Default
	// DefaultRetryInterval.
	RetryInterval time.Duration

	// Slot is the logical replication slot, created with pgoutput if missing.
	// It is permanent, so a restarted stand-in resumes where it stopped.
	// Default DefaultSlot.
	Slot string

	// StatusInterval is the maximum time between standby status updates to
	// PostgreSQL. It must stay below the server's wal_sender_timeout (60
	// seconds by default). Default DefaultStatusInterval.
	StatusInterval time.Duration
}

// StandIn does what Sequin does for the outbox, for development and tests: it
// streams the outbox publication through a pgoutput slot and publishes each
// inserted row to NATS as Sequin's NATS sink would.
//
// Delivery is at least once. A row's transaction is confirmed to PostgreSQL
// only after a NATS flush that followed its publish, so after a crash or a
// NATS failure the unconfirmed transactions are published again. Like
// Sequin's, the publish is core NATS: a row reaches a consumer only if a
// JetStream stream captures the subject.
type StandIn struct {
	config       StandInConfig
	connConfig   *pgconn.Config
	databaseName string
	logger       *slog.Logger

	ready     chan struct{}
	readyOnce sync.Once
}

// NewStandIn checks config and returns a stand-in ready to Run.
func NewStandIn(config StandInConfig) (*StandIn, error) {
	if config.DatabaseURL == "" {
		return nil, errors.New("sequin stand-in: DatabaseURL is missing")
	}
	if config.NATS == nil {
		return nil, errors.New("sequin stand-in: NATS connection is missing")
	}
	if config.Publication == "" {
		config.Publication = DefaultPublication
	}
	if config.Slot == "" {
		config.Slot = DefaultSlot
	}
	if config.StatusInterval <= 0 {
		config.StatusInterval = DefaultStatusInterval
	}
	if config.RetryInterval <= 0 {
		config.RetryInterval = DefaultRetryInterval
	}
	if !slotNamePattern.MatchString(config.Slot) {
		return nil, fmt.Errorf("sequin stand-in: slot name %q is invalid (use 1 to 63 of a-z, 0-9 and _)", config.Slot)
	}
	if !publicationNamePattern.MatchString(config.Publication) {
		return nil, fmt.Errorf("sequin stand-in: publication name %q is invalid (use a letter or _ then letters, digits or _)", config.Publication)
	}

	connConfig, err := pgconn.ParseConfig(config.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("sequin stand-in: parse DatabaseURL: %w", err)
	}
	connConfig.RuntimeParams["replication"] = "database"
	connConfig.RuntimeParams["timezone"] = "UTC"
	connConfig.RuntimeParams["datestyle"] = "ISO"
	if connConfig.RuntimeParams["application_name"] == "" {
		connConfig.RuntimeParams["application_name"] = "eventruntime-sequin-standin"
	}

	databaseName := config.DatabaseName
	if databaseName == "" {
		databaseName = connConfig.Database
	}
	if databaseName == "" {
		return nil, errors.New("sequin stand-in: DatabaseURL names no database and DatabaseName is empty")
	}

	logger := config.Logger
	if logger == nil {
		logger = slog.Default()
	}
	return &StandIn{
		config:       config,
		connConfig:   connConfig,
		databaseName: databaseName,
		logger:       logger,
		ready:        make(chan struct{}),
	}, nil
}

// Ready returns a channel that is closed once the first replication session
// streams. Rows committed before then may never be published when Run creates
// the slot, because a new slot starts at its consistent point.
func (s *StandIn) Ready() <-chan struct{} {
	return s.ready
}

// Run streams until ctx is done, then confirms what it has published and
// returns nil. It retries after PostgreSQL and NATS failures, waiting
// RetryInterval and doubling the wait each time. It returns an error only when
// the NATS connection has been closed.
func (s *StandIn) Run(ctx context.Context) error {
	s.logger.Info("sequin stand-in started", "event", "standin.started",
		"slot", s.config.Slot, "publication", s.config.Publication, "database_name", s.databaseName)

	delay := s.config.RetryInterval
	for {
		progressed, err := s.runSession(ctx)
		if ctx.Err() != nil {
			s.logger.Info("sequin stand-in stopped", "event", "standin.stopped", "slot", s.config.Slot)
			return nil
		}
		if s.config.NATS.IsClosed() {
			s.logger.Error("NATS connection closed, stand-in stopping", "event", "standin.nats_closed", "error", err)
			return fmt.Errorf("sequin stand-in: NATS connection is closed: %w", err)
		}
		if progressed {
			delay = s.config.RetryInterval
		}
		s.logger.Warn("replication session failed, retrying", "event", "standin.retrying",
			"slot", s.config.Slot, "error", err, "retry_in", delay)

		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			s.logger.Info("sequin stand-in stopped", "event", "standin.stopped", "slot", s.config.Slot)
			return nil
		case <-timer.C:
		}
		delay = min(delay*2, maxRetryInterval)
	}
}

// runSession connects, streams until an error or ctx is done, and reports
// whether it confirmed any new position.
func (s *StandIn) runSession(ctx context.Context) (bool, error) {
	if !s.config.NATS.IsConnected() {
		return false, errNATSDisconnected
	}

	conn, err := pgconn.ConnectConfig(ctx, s.connConfig)
	if err != nil {
		return false, fmt.Errorf("connect for replication: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()

	start, err := s.ensureSlot(ctx, conn)
	if err != nil {
		return false, err
	}

	err = pglogrepl.StartReplication(ctx, conn, s.config.Slot, 0, pglogrepl.StartReplicationOptions{
		Mode: pglogrepl.LogicalReplication,
		PluginArgs: []string{
			"proto_version '1'",
			"publication_names '" + s.config.Publication + "'",
		},
	})
	if err != nil {
		return false, fmt.Errorf("start replication on slot %s: %w", s.config.Slot, err)
	}
	s.logger.Info("replication started", "event", "standin.replication_started",
		"slot", s.config.Slot, "confirmed_lsn", start.String())
	s.readyOnce.Do(func() { close(s.ready) })

	stream := newStream(s, conn, start)
	err = stream.run(ctx)
	return stream.confirmed > start, err
}

// ensureSlot creates the slot when it does not exist and returns its
// confirmed flush position.
func (s *StandIn) ensureSlot(ctx context.Context, conn *pgconn.PgConn) (pglogrepl.LSN, error) {
	// The slot name matches slotNamePattern, so it needs no quoting.
	query := "SELECT plugin, database, coalesce(confirmed_flush_lsn::text, '') FROM pg_replication_slots WHERE slot_name = '" +
		s.config.Slot + "'"
	results, err := conn.Exec(ctx, query).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("look up slot %s: %w", s.config.Slot, err)
	}
	if len(results) == 1 && len(results[0].Rows) == 1 {
		row := results[0].Rows[0]
		plugin, database, confirmed := string(row[0]), string(row[1]), string(row[2])
		if plugin != "pgoutput" || database != s.connConfig.Database {
			return 0, fmt.Errorf("slot %s uses plugin %q on database %q, want pgoutput on %q",
				s.config.Slot, plugin, database, s.connConfig.Database)
		}
		lsn, err := pglogrepl.ParseLSN(confirmed)
		if err != nil {
			return 0, fmt.Errorf("slot %s has confirmed_flush_lsn %q: %w", s.config.Slot, confirmed, err)
		}
		return lsn, nil
	}

	result, err := pglogrepl.CreateReplicationSlot(ctx, conn, s.config.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{
			Mode:           pglogrepl.LogicalReplication,
			SnapshotAction: "NOEXPORT_SNAPSHOT",
		})
	if err != nil {
		return 0, fmt.Errorf("create slot %s: %w", s.config.Slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(result.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("slot %s has consistent point %q: %w", s.config.Slot, result.ConsistentPoint, err)
	}
	s.logger.Info("replication slot created", "event", "standin.slot_created",
		"slot", s.config.Slot, "consistent_point", result.ConsistentPoint)
	return lsn, nil
}

// stream is the state of one replication session.
type stream struct {
	standIn *StandIn
	conn    *pgconn.PgConn
	logger  *slog.Logger

	relations map[uint32]*relation

	// The transaction being received.
	inTransaction bool
	commitLSN     int64
	commitIdx     int
	commitTime    time.Time

	// committed is the end of the last transaction whose rows are all
	// published, or a keepalive position received between transactions.
	committed pglogrepl.LSN
	// confirmed is the position last reported as flushed to PostgreSQL.
	confirmed pglogrepl.LSN
	// unflushed counts rows published since the last NATS flush.
	unflushed  int
	nextStatus time.Time

	// Reused for every row.
	message   Message
	body      []byte
	natsMsg   nats.Msg
	msgID     []string
	consumer  Consumer
	database  Database
	recordPKs []string
}

func newStream(standIn *StandIn, conn *pgconn.PgConn, start pglogrepl.LSN) *stream {
	s := &stream{
		standIn:   standIn,
		conn:      conn,
		logger:    standIn.logger,
		relations: make(map[uint32]*relation),
		committed: start,
		confirmed: start,
		msgID:     make([]string, 1),
	}
	s.natsMsg.Header = nats.Header{MsgIDHeader: s.msgID}

	annotations := []byte(`{}`)
	s.consumer = Consumer{
		ID:          uuid.NewSHA1(uuid.NameSpaceURL, []byte("eventruntime:sequin-standin:consumer:"+StandInConsumerName)).String(),
		Name:        StandInConsumerName,
		Annotations: annotations,
	}
	s.database = Database{
		ID:          uuid.NewSHA1(uuid.NameSpaceURL, []byte("eventruntime:sequin-standin:database:"+standIn.databaseName)).String(),
		Name:        standIn.databaseName,
		Annotations: annotations,
		Database:    standIn.connConfig.Database,
		Hostname:    standIn.connConfig.Host,
	}
	return s
}

// run receives and publishes until an error or ctx is done. On ctx done it
// confirms what is flushed, ends replication and returns nil.
func (s *stream) run(ctx context.Context) error {
	s.nextStatus = time.Now().Add(s.standIn.config.StatusInterval)
	for {
		if !time.Now().Before(s.nextStatus) {
			if err := s.confirm(); err != nil {
				return err
			}
		}

		deadline := s.nextStatus
		if idleDeadline := time.Now().Add(idleFlushDelay); s.unflushed > 0 && idleDeadline.Before(deadline) {
			deadline = idleDeadline
		}
		receiveCtx, cancel := context.WithDeadline(ctx, deadline)
		message, err := s.conn.ReceiveMessage(receiveCtx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return s.stop()
			}
			if pgconn.Timeout(err) {
				if s.unflushed > 0 {
					if err := s.confirm(); err != nil {
						return err
					}
				}
				continue
			}
			return fmt.Errorf("receive replication message: %w", err)
		}

		if err := s.handle(message); err != nil {
			return err
		}
	}
}

func (s *stream) handle(message pgproto3.BackendMessage) error {
	switch message := message.(type) {
	case *pgproto3.CopyData:
		if len(message.Data) == 0 {
			return nil
		}
		switch message.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			keepalive, err := pglogrepl.ParsePrimaryKeepaliveMessage(message.Data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			// Between transactions every change up to the server's position
			// has been received, so the slot may move past WAL that holds
			// nothing for this publication.
			if !s.inTransaction && keepalive.ServerWALEnd > s.committed {
				s.committed = keepalive.ServerWALEnd
			}
			if keepalive.ReplyRequested {
				return s.confirm()
			}
		case pglogrepl.XLogDataByteID:
			xlog, err := pglogrepl.ParseXLogData(message.Data[1:])
			if err != nil {
				return fmt.Errorf("parse XLogData: %w", err)
			}
			return s.handleWAL(xlog.WALData)
		}
	case *pgproto3.ErrorResponse:
		return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(message))
	case *pgproto3.CopyDone:
		return errors.New("replication stream ended by the server")
	}
	return nil
}

func (s *stream) handleWAL(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	// Only the messages the stand-in uses are decoded.
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeBegin:
		var begin pglogrepl.BeginMessage
		if err := begin.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode Begin: %w", err)
		}
		s.inTransaction = true
		s.commitLSN = int64(begin.FinalLSN)
		s.commitIdx = 0
		s.commitTime = begin.CommitTime
	case pglogrepl.MessageTypeRelation:
		var message pglogrepl.RelationMessage
		if err := message.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode Relation: %w", err)
		}
		s.relations[message.RelationID] = newRelation(&message, s.standIn.databaseName)
	case pglogrepl.MessageTypeInsert:
		var insert pglogrepl.InsertMessage
		if err := insert.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode Insert: %w", err)
		}
		return s.publishInsert(&insert)
	case pglogrepl.MessageTypeCommit:
		var commit pglogrepl.CommitMessage
		if err := commit.Decode(data[1:]); err != nil {
			return fmt.Errorf("decode Commit: %w", err)
		}
		s.inTransaction = false
		s.committed = commit.TransactionEndLSN
		if s.unflushed >= flushEveryRows {
			return s.confirm()
		}
	}
	return nil
}

func (s *stream) publishInsert(insert *pglogrepl.InsertMessage) error {
	commitIdx := s.commitIdx
	s.commitIdx++

	rel := s.relations[insert.RelationID]
	if rel == nil {
		return fmt.Errorf("insert on relation %d arrived before its Relation message", insert.RelationID)
	}
	idempotencyKey := IdempotencyKey(s.commitLSN, commitIdx)

	event, err := rel.event(insert.Tuple)
	if err != nil {
		// Sequin would publish the row as it is; the stand-in cannot encode
		// it, so it logs the row as lost.
		s.logger.Error("outbox row not published: it does not convert to an event", "event", "standin.row_skipped",
			"relation", rel.qualifiedName, "commit_lsn", s.commitLSN, "commit_idx", commitIdx, "error", err)
		return nil
	}
	if drop := s.standIn.config.Drop; drop != nil && drop(event) {
		s.logger.Debug("outbox row dropped by the Drop hook", "event", "standin.row_dropped",
			"event_id", event.ID, "commit_lsn", s.commitLSN, "commit_idx", commitIdx)
		return nil
	}

	s.recordPKs = rel.recordPKs(insert.Tuple, &event, s.recordPKs[:0])
	commitLSN := s.commitLSN
	s.message = Message{
		Action: ActionInsert,
		Event:  event,
		Metadata: Metadata{
			TableSchema:     rel.namespace,
			TableName:       rel.name,
			CommitTimestamp: s.commitTime,
			CommitLSN:       &commitLSN,
			CommitIdx:       &commitIdx,
			DatabaseName:    s.standIn.databaseName,
			IdempotencyKey:  idempotencyKey,
			RecordPKs:       s.recordPKs,
			Consumer:        s.consumer,
			Database:        s.database,
		},
	}
	s.body, err = AppendEncode(s.body[:0], &s.message)
	if err != nil {
		s.logger.Error("outbox row not published: it does not encode", "event", "standin.row_skipped",
			"event_id", event.ID, "commit_lsn", s.commitLSN, "commit_idx", commitIdx, "error", err)
		return nil
	}

	s.natsMsg.Subject = rel.subject
	s.natsMsg.Data = s.body
	s.msgID[0] = idempotencyKey
	if err := s.standIn.config.NATS.PublishMsg(&s.natsMsg); err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			s.logger.Error("outbox row not published: above the NATS server's max_payload", "event", "standin.row_skipped",
				"event_id", event.ID, "bytes", len(s.body), "commit_lsn", s.commitLSN, "commit_idx", commitIdx)
			return nil
		}
		s.logger.Error("NATS publish failed", "event", "standin.publish_failed",
			"event_id", event.ID, "commit_lsn", s.commitLSN, "commit_idx", commitIdx, "error", err)
		return fmt.Errorf("publish event %s: %w", event.ID, err)
	}
	s.unflushed++
	return nil
}

// confirm flushes NATS when rows are unflushed, then reports the end of the
// last published transaction to PostgreSQL as flushed.
func (s *stream) confirm() error {
	position := s.committed
	if s.unflushed > 0 {
		if err := s.standIn.config.NATS.FlushTimeout(s.standIn.config.StatusInterval); err != nil {
			s.logger.Error("NATS flush failed, position not confirmed", "event", "standin.flush_failed",
				"unflushed_rows", s.unflushed, "confirmed_lsn", s.confirmed.String(), "error", err)
			return fmt.Errorf("flush NATS: %w", err)
		}
		s.unflushed = 0
	}
	// confirmed starts at the slot's confirmed_flush_lsn and only grows, so
	// the stand-in never reports a position below what the slot holds.
	if position > s.confirmed {
		s.confirmed = position
	}
	s.nextStatus = time.Now().Add(s.standIn.config.StatusInterval)
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: s.confirmed,
		WALFlushPosition: s.confirmed,
		WALApplyPosition: s.confirmed,
	})
	if err != nil {
		return fmt.Errorf("send standby status update: %w", err)
	}
	return nil
}

// stop finishes the transaction being received, confirms what is flushed
// and ends the replication stream so the server records the position before
// the connection closes.
func (s *stream) stop() error {
	// A transaction whose rows are partly published would be sent again by
	// the next session, so wait up to stopTimeout for its Commit.
	deadline := time.Now().Add(stopTimeout)
	for s.inTransaction && time.Now().Before(deadline) {
		receiveCtx, cancel := context.WithDeadline(context.Background(), deadline)
		message, err := s.conn.ReceiveMessage(receiveCtx)
		cancel()
		if err == nil {
			err = s.handle(message)
		}
		if err != nil {
			s.logger.Warn("finishing the current transaction failed; its rows will be published again",
				"event", "standin.stop_drain_failed", "commit_lsn", s.commitLSN, "error", err)
			break
		}
	}

	if err := s.confirm(); err != nil {
		s.logger.Warn("final confirmation failed; unconfirmed rows will be published again",
			"event", "standin.stop_confirm_failed", "error", err)
		return nil
	}
	_ = s.conn.Conn().SetDeadline(time.Now().Add(stopTimeout))
	if _, err := pglogrepl.SendStandbyCopyDone(context.Background(), s.conn); err != nil {
		s.logger.Warn("ending replication failed", "event", "standin.copy_done_failed", "error", err)
	}
	s.logger.Info("replication stopped", "event", "standin.replication_stopped",
		"slot", s.standIn.config.Slot, "confirmed_lsn", s.confirmed.String())
	return nil
}
