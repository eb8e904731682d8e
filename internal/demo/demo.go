// Package demo generates realistic PCM interaction events for `eventruntime
// dev`, tests and benchmarks: allow-listed endpoint templates, both roles,
// several tenants, and transactions that append one or several events.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator/ofb"
)

// Tenant is a tenant the demo writes events for.
type Tenant struct {
	// ID is the tenant id.
	ID string
	// OrganisationID is the tenant's own organisation: serverOrgId of its
	// SERVER reports and clientOrgId of its CLIENT reports.
	OrganisationID string
	// SoftwareStatementID is the tenant's client software statement id.
	SoftwareStatementID string
}

// Generator builds interaction events. It is not safe for concurrent use.
type Generator struct {
	endpoints []string
	rng       *rand.Rand
	tenants   []Tenant
}

// NewGenerator returns a generator over tenants, seeded for repeatability.
func NewGenerator(seed uint64, tenants []Tenant) *Generator {
	endpoints := ofb.PrivateReportsAllowlist().Endpoints()
	return &Generator{endpoints: endpoints, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), tenants: tenants}
}

var methods = []string{"GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE"}
var statuses = []int{200, 200, 200, 200, 201, 204, 400, 404, 422, 500}

// Event returns a new pcm.interaction.recorded event for a random tenant.
func (g *Generator) Event() *outbox.Event {
	tenant := g.tenants[g.rng.IntN(len(g.tenants))]
	endpoint := g.endpoints[g.rng.IntN(len(g.endpoints))]
	counterpart := uuid.NewSHA1(uuid.NameSpaceOID, []byte(fmt.Sprintf("participant-%d", g.rng.IntN(20)))).String()
	now := time.Now().UTC()

	interaction := outbox.Interaction{
		Endpoint:          endpoint,
		FAPIInteractionID: uuid.Must(uuid.NewV7()).String(),
		HTTPMethod:        methods[g.rng.IntN(len(methods))],
		ProcessTimespan:   int64(5 + g.rng.IntN(900)),
		StatusCode:        statuses[g.rng.IntN(len(statuses))],
		Timestamp:         now.Add(-time.Duration(g.rng.IntN(2000)) * time.Millisecond),
	}
	if g.rng.IntN(3) == 0 {
		interaction.Role = outbox.RoleClient
		interaction.ClientOrgID = tenant.OrganisationID
		interaction.ServerOrgID = counterpart
		interaction.ClientSSID = tenant.SoftwareStatementID
		interaction.EndpointURIPrefix = "https://api.participant.example/"
		interaction.AdditionalInfo = map[string]any{"personType": "PF"}
		interaction.CorrelationID = fmt.Sprintf("corr-%d", g.rng.Uint32())
	} else {
		interaction.Role = outbox.RoleServer
		interaction.ClientOrgID = counterpart
		interaction.ServerOrgID = tenant.OrganisationID
	}
	interaction.URL = strings.ReplaceAll(endpoint, "{", "x-")

	payload, _ := json.Marshal(interaction)
	return &outbox.Event{
		TenantID:    tenant.ID,
		Ecosystem:   outbox.EcosystemOFB,
		Type:        outbox.TypeInteractionRecorded,
		Version:     1,
		AggregateID: interaction.FAPIInteractionID,
		Payload:     payload,
		OccurredAt:  interaction.Timestamp,
	}
}

// Producer appends generated events to the outbox at a steady rate.
type Producer struct {
	Generator *Generator
	Logger    *slog.Logger
	Pool      *pgxpool.Pool
	// Rate is events per second.
	Rate int
	// Appended counts committed events.
	Appended atomic.Int64
}

// Run appends events until ctx is done. Every tenth transaction appends
// several events at once, as a business transaction touching several
// regulated calls would.
func (p *Producer) Run(ctx context.Context) error {
	if p.Rate <= 0 {
		return fmt.Errorf("demo rate must be positive, got %d", p.Rate)
	}
	tick := 100 * time.Millisecond
	perTick := float64(p.Rate) * tick.Seconds()
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	var owed float64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		owed += perTick
		for owed >= 1 {
			size := 1
			if p.Generator.rng.IntN(10) == 0 {
				size = 2 + p.Generator.rng.IntN(4)
			}
			if float64(size) > owed {
				size = int(owed)
			}
			events := make([]*outbox.Event, size)
			for i := range events {
				events[i] = p.Generator.Event()
			}
			err := pgx.BeginFunc(ctx, p.Pool, func(tx pgx.Tx) error { return outbox.Append(ctx, tx, events...) })
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				p.Logger.Warn("demo append failed", "event", "demo.append_failed", "error", err)
				break
			}
			p.Appended.Add(int64(size))
			owed -= float64(size)
		}
	}
}
