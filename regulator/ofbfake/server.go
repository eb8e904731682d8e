// Package ofbfake is a strict stand-in for the Open Finance Brasil metrics
// platform (PCM), for tests and local runs. It serves the token endpoints
// over mutual TLS and the private report API, validates every report request
// against the embedded PCM v3.1.0 OpenAPI document, and records what it saw.
// It listens only on 127.0.0.1 and keeps everything in memory.
package ofbfake

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/finnest/eventruntime/regulator/ofb"
)

// DefaultTokenLifetime is the lifetime of the fake's access tokens, the
// 6 hours of the real PCM.
const DefaultTokenLifetime = 6 * time.Hour

// Config configures a Server. The zero value is ready to use.
type Config struct {
	// Allowlist holds the accepted endpoint templates. The default is
	// ofb.PrivateReportsAllowlist().
	Allowlist *ofb.Allowlist

	// Now returns the current time, for token expiry and the report time
	// rules. The default is time.Now.
	Now func() time.Time

	// SkipRequestValidation turns off validating each report request
	// against the spec, for benchmarks only: kin-openapi takes about a
	// quarter of a second of one core per 5,000-item request, which would
	// otherwise compete with the pipeline being measured. The per-item rules
	// (token organisation, timestamp, allow-list) still run.
	SkipRequestValidation bool

	// SkipResponseValidation turns off validating each report API response
	// against the spec. By default a response that fails is still sent and
	// is recorded in Violations.
	SkipResponseValidation bool

	// TokenLifetime is the expires_in of issued tokens. The default is
	// DefaultTokenLifetime.
	TokenLifetime time.Duration
}

// Fault is a forced response of the report API, for testing error handling.
type Fault struct {
	// Body replaces the {"message"} error body when not nil, for example to
	// send a result array of the wrong length.
	Body json.RawMessage

	// Delay is waited before responding, or before normal handling when
	// Status is 0.
	Delay time.Duration

	// LoseResponse handles the request normally, storing and counting its
	// items, then closes the connection without a response, as when a
	// response is lost in transit. Status is ignored.
	LoseResponse bool

	// Message is the "message" of the error body. The default is the
	// status text.
	Message string

	// RetryAfter is the Retry-After header value, sent when not empty.
	RetryAfter string

	// Status is the HTTP status of the response. 0 means handle the request
	// normally after Delay.
	Status int
}

// Responder decides a fault for one report API request, given the raw report
// items of a POST (nil for GET). A nil result means normal handling.
type Responder func(r *http.Request, reports []json.RawMessage) *Fault

// Server is the fake PCM. Its methods are safe for concurrent use.
type Server struct {
	allowlist              *ofb.Allowlist
	ca                     *certificateAuthority
	handler                http.Handler
	now                    func() time.Time
	postRoute              *routers.Route
	getRoute               *routers.Route
	skipRequestValidation  bool
	skipResponseValidation bool
	tokenLifetime          time.Duration
	validationOptions      *openapi3filter.Options

	mu                 sync.Mutex
	accepted           []storedReport
	acceptedByID       map[string][]int
	faults             []Fault
	freshTokenRequests int
	httpServer         *http.Server
	listener           net.Listener
	requests           int
	responder          Responder
	seen               map[string]int
	tokenRequests      int
	tokens             map[string]issuedToken
	url                string
	violations         []string
}

// issuedToken is the stored state of an access token.
type issuedToken struct {
	clientID string
	expiry   time.Time
	orgID    string
}

// storedReport is an accepted report, kept for read-back.
type storedReport struct {
	createdAt time.Time
	raw       json.RawMessage
	report    ofb.Report
	reportID  string
}

// New builds a fake PCM. Call Start to serve it over TLS, or use Handler.
func New(cfg Config) (*Server, error) {
	if cfg.Allowlist == nil {
		cfg.Allowlist = ofb.PrivateReportsAllowlist()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TokenLifetime == 0 {
		cfg.TokenLifetime = DefaultTokenLifetime
	}

	ca, err := newCertificateAuthority()
	if err != nil {
		return nil, err
	}
	spec, err := ofb.EmbeddedSpec()
	if err != nil {
		return nil, fmt.Errorf("load PCM spec: %w", err)
	}
	postRoute, getRoute, err := reportRoutes(spec)
	if err != nil {
		return nil, err
	}

	s := &Server{
		allowlist:              cfg.Allowlist,
		ca:                     ca,
		now:                    cfg.Now,
		postRoute:              postRoute,
		getRoute:               getRoute,
		skipRequestValidation:  cfg.SkipRequestValidation,
		skipResponseValidation: cfg.SkipResponseValidation,
		tokenLifetime:          cfg.TokenLifetime,
		validationOptions: &openapi3filter.Options{
			AuthenticationFunc: openapi3filter.NoopAuthenticationFunc,
		},
		acceptedByID: map[string][]int{},
		seen:         map[string]int{},
		tokens:       map[string]issuedToken{},
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST "+ofb.TokenPath+"{$}", s.handleToken)
	mux.HandleFunc("POST "+ofb.TokenFreshPath+"{$}", s.handleToken)
	mux.HandleFunc("POST "+ofb.ReportPath+"{$}", s.handlePostReports)
	mux.HandleFunc("GET "+ofb.ReportPath+"{fapiInteractionId}", s.handleGetReport)
	s.handler = mux
	return s, nil
}

// reportRoutes builds the validation routes of the two private report
// operations from the spec.
func reportRoutes(spec *ofb.Spec) (post, get *routers.Route, err error) {
	const getPath = ofb.ReportPath + "{fapiInteractonId}" // the spec's spelling
	postItem := spec.Doc.Paths.Value(ofb.ReportPath)
	getItem := spec.Doc.Paths.Value(getPath)
	if postItem == nil || postItem.Post == nil || getItem == nil || getItem.Get == nil {
		return nil, nil, errors.New("PCM spec has no private report operations")
	}

	post = &routers.Route{
		Spec: spec.Doc, Path: ofb.ReportPath, PathItem: postItem,
		Method: http.MethodPost, Operation: postItem.Post,
	}
	get = &routers.Route{
		Spec: spec.Doc, Path: getPath, PathItem: getItem,
		Method: http.MethodGet, Operation: getItem.Get,
	}
	return post, get, nil
}

// Handler returns the fake's HTTP handler. Without Start's TLS listener the
// token endpoints see no client certificate and return 401.
func (s *Server) Handler() http.Handler { return s.handler }

// Start serves the fake over TLS on a random port of 127.0.0.1. Clients may
// present a certificate issued by IssueClientCertificate, and the token
// endpoints require one.
func (s *Server) Start() error {
	serverCert, err := s.ca.serverCertificate()
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for fake PCM: %w", err)
	}

	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    s.ca.pool,
		MinVersion:   tls.VersionTLS12,
	}
	httpServer := &http.Server{
		// TLS handshake failures, such as a client certificate of another
		// CA, are logged at debug level: tests provoke them on purpose.
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         tlsConfig,
	}

	s.mu.Lock()
	s.httpServer = httpServer
	s.listener = listener
	s.url = "https://" + listener.Addr().String()
	s.mu.Unlock()

	go func() {
		// ServeTLS returns http.ErrServerClosed after Close.
		_ = httpServer.ServeTLS(listener, "", "")
	}()
	return nil
}

// URL returns the base URL of the started server, such as
// https://127.0.0.1:41234. It serves both the token and the report API.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Close stops the server at once, closing its connections and cutting off
// requests in progress.
func (s *Server) Close() error {
	s.mu.Lock()
	httpServer := s.httpServer
	s.mu.Unlock()
	if httpServer == nil {
		return nil
	}
	return httpServer.Close()
}
