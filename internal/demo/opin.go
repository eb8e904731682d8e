package demo

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"regexp"
	"time"

	"github.com/google/uuid"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator/opin"
)

// OPINTenant is an Open Insurance tenant the demo writes events for.
type OPINTenant struct {
	// AuthorisationServerID is the tenant's authorisation server id, the
	// serverASId of its SERVER events.
	AuthorisationServerID string
	// ID is the tenant id.
	ID string
	// OrganisationID is the tenant's own organisation: serverOrgId of its
	// SERVER events and clientOrgId of its CLIENT events.
	OrganisationID string
	// SoftwareStatementID is the tenant's client software statement id.
	SoftwareStatementID string
}

// OPINGenerator builds Open Insurance interaction events that the opin
// adapter maps without error: endpoints from the ingestion spec's enum, both
// roles, a correlationId, a real url, and a consentId where the spec
// requires one. It is not safe for concurrent use.
type OPINGenerator struct {
	endpoints []string
	rng       *rand.Rand
	tenants   []OPINTenant
}

// NewOPINGenerator returns a generator over tenants, seeded for
// repeatability. It fails when the embedded ingestion spec does not load.
func NewOPINGenerator(seed uint64, tenants []OPINTenant) (*OPINGenerator, error) {
	spec, err := opin.EmbeddedSpec()
	if err != nil {
		return nil, err
	}
	return &OPINGenerator{
		endpoints: spec.Endpoints(),
		rng:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		tenants:   tenants,
	}, nil
}

var pathParameter = regexp.MustCompile(`\{[^}]*\}`)

// Event returns a new pcm.interaction.recorded event of the opin ecosystem
// for a random tenant.
func (g *OPINGenerator) Event() *outbox.Event {
	tenant := g.tenants[g.rng.IntN(len(g.tenants))]
	endpoint := g.endpoints[g.rng.IntN(len(g.endpoints))]
	participant := g.rng.IntN(20)
	counterpartOrg := uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "opin-participant-%d", participant)).String()
	counterpartAS := uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "opin-as-%d", participant)).String()
	counterpartSS := uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "opin-ss-%d", participant)).String()

	interaction := outbox.Interaction{
		CorrelationID:     uuid.NewString(),
		Endpoint:          endpoint,
		FAPIInteractionID: uuid.Must(uuid.NewV7()).String(),
		HTTPMethod:        methods[g.rng.IntN(len(methods))],
		ProcessTimespan:   int64(5 + g.rng.IntN(900)),
		StatusCode:        statuses[g.rng.IntN(len(statuses))],
		Timestamp:         time.Now().UTC().Add(-time.Duration(g.rng.IntN(2000)) * time.Millisecond),
		URL: pathParameter.ReplaceAllStringFunc(endpoint, func(string) string {
			return fmt.Sprintf("id-%d", g.rng.IntN(1_000_000))
		}),
	}
	if g.rng.IntN(3) == 0 {
		interaction.Role = outbox.RoleClient
		interaction.ClientOrgID = tenant.OrganisationID
		interaction.ClientSSID = tenant.SoftwareStatementID
		interaction.ServerOrgID = counterpartOrg
		interaction.ServerASID = counterpartAS
		interaction.EndpointURIPrefix = "https://api.participant.example"
	} else {
		interaction.Role = outbox.RoleServer
		interaction.ClientOrgID = counterpartOrg
		interaction.ClientSSID = counterpartSS
		interaction.ServerOrgID = tenant.OrganisationID
		interaction.ServerASID = tenant.AuthorisationServerID
	}
	if !opin.IsPhase1Endpoint(endpoint) && interaction.StatusCode >= 200 && interaction.StatusCode <= 299 {
		interaction.AdditionalInfo = map[string]any{"consentId": "urn:demo:" + uuid.NewString()}
	}

	payload, _ := json.Marshal(interaction)
	return &outbox.Event{
		TenantID:    tenant.ID,
		Ecosystem:   outbox.EcosystemOPIN,
		Type:        outbox.TypeInteractionRecorded,
		Version:     1,
		AggregateID: interaction.FAPIInteractionID,
		Payload:     payload,
		OccurredAt:  interaction.Timestamp,
	}
}
