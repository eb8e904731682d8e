// Package opinfake is a strict stand-in for the Open Insurance Brasil
// ingestion API, for tests and local runs. It serves the two batch paths,
// verifies each request's compact JWS with lestrrat-go/jwx (a different
// library from the go-jose signer of package opin) against the keys
// registered with RegisterKey, validates the decoded body against the
// embedded ingestion spec version 1.0.13, and records what it saw. Start
// listens only on a loopback address, and everything is kept in memory.
package opinfake

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/finnest/eventruntime/regulator/opin"
)

// Config configures a Server. The zero value is ready to use.
type Config struct {
	// Now returns the current time, stored with accepted events. The
	// default is time.Now.
	Now func() time.Time

	// SkipResponseValidation turns off validating each batch response
	// against the spec. By default a response that fails is still sent and
	// is recorded in Violations.
	SkipResponseValidation bool
}

// Fault is a forced response of a batch path, for testing error handling.
type Fault struct {
	// Body replaces the {"message"} error body when not nil, for example to
	// send a result array of the wrong length.
	Body json.RawMessage

	// Delay is waited before responding, or before normal handling when
	// Status is 0.
	Delay time.Duration

	// Message is the "message" of the error body. The default is the status
	// text.
	Message string

	// Status is the HTTP status of the response. 0 means handle the request
	// normally after Delay.
	Status int
}

// Responder decides a fault for one verified batch request, given the raw
// events of its decoded body. A nil result means normal handling.
type Responder func(r *http.Request, events []json.RawMessage) *Fault

// AcceptedEvent is an event the fake accepted, with the request it came in.
type AcceptedEvent struct {
	// Event is the event as decoded from the request.
	Event opin.Event

	// KeyID is the kid of the request's JWS.
	KeyID string

	// OrganisationID is the organisationId of the request body.
	OrganisationID string

	// ReceivedAt is when the fake accepted it.
	ReceivedAt time.Time

	// ReportID is the reportId the fake returned.
	ReportID string

	// Role is CLIENT or SERVER, from the request path.
	Role string
}

// registeredKey is a signing key of an organisation.
type registeredKey struct {
	organisationID string
	public         *rsa.PublicKey
}

// Server is the fake ingestion API. Its methods are safe for concurrent use.
type Server struct {
	handler                http.Handler
	now                    func() time.Time
	spec                   *opin.Spec
	skipResponseValidation bool

	mu          sync.Mutex
	accepted    []AcceptedEvent
	acceptedKey map[string]string
	faults      []Fault
	keys        map[string]registeredKey
	requests    int
	responder   Responder
	seen        map[string]int
	server      *httptest.Server
	violations  []string
}

// New builds a fake ingestion API. Call Start to serve it over TLS, or use
// Handler.
func New(cfg Config) (*Server, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	spec, err := opin.EmbeddedSpec()
	if err != nil {
		return nil, fmt.Errorf("load OPIN ingestion spec: %w", err)
	}
	s := &Server{
		now:                    cfg.Now,
		spec:                   spec,
		skipResponseValidation: cfg.SkipResponseValidation,
		acceptedKey:            map[string]string{},
		keys:                   map[string]registeredKey{},
		seen:                   map[string]int{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+opin.ServerBatchPath, s.handleBatch(opin.RoleServer))
	mux.HandleFunc("POST "+opin.ClientBatchPath, s.handleBatch(opin.RoleClient))
	s.handler = mux
	return s, nil
}

// RegisterKey registers the public half of an organisation's signing key
// under kid, replacing any key registered under that kid.
func (s *Server) RegisterKey(organisationID, kid string, public *rsa.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[kid] = registeredKey{organisationID: organisationID, public: public}
}

// Handler returns the fake's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Start serves the fake over TLS on a random port of 127.0.0.1 (or ::1
// without IPv4), through net/http/httptest, whose self-signed certificate is
// valid for 127.0.0.1, ::1 and example.com. Use RootCAs or CACertPEM to trust
// it. A process started with httptest's -httptest.serve flag listens on
// that flag's address instead.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server != nil {
		return fmt.Errorf("fake OPIN ingestion API already started at %s", s.server.URL)
	}
	server := httptest.NewUnstartedServer(s.handler)
	server.StartTLS()
	s.server = server
	return nil
}

// URL returns the base URL of the started server, such as
// https://127.0.0.1:41234, or "" before Start.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server == nil {
		return ""
	}
	return s.server.URL
}

// RootCAs returns a pool that contains only the started server's
// certificate, or nil before Start.
func (s *Server) RootCAs() *x509.CertPool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.server.Certificate())
	return pool
}

// CACertPEM returns the PEM certificate of the started server, which is
// self-signed, or nil before Start.
func (s *Server) CACertPEM() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server == nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.server.Certificate().Raw})
}

// Close stops the server, closing every client connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	server := s.server
	s.mu.Unlock()
	if server != nil {
		server.CloseClientConnections()
		server.Close()
	}
	return nil
}
