package ofb_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/regulator/ofb"
	"github.com/finnest/eventruntime/regulator/ofbfake"
)

const (
	orgA = "11111111-1111-4111-8111-111111111111"
	orgB = "22222222-2222-4222-8222-222222222222"
	ssA  = "33333333-3333-4333-8333-333333333333"
)

// clock is a settable time shared by the fake and the client.
type clock struct{ nanos atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.nanos.Store(time.Now().UnixNano())
	return c
}

func (c *clock) Now() time.Time             { return time.Unix(0, c.nanos.Load()) }
func (c *clock) Advance(step time.Duration) { c.nanos.Add(int64(step)) }

type clientBundle struct {
	clock  *clock
	client *ofb.Client
	fake   *ofbfake.Server
}

// setupClient starts a fake PCM and a client of orgA that trusts it.
func setupClient(t *testing.T) *clientBundle {
	t.Helper()
	now := newClock()
	fake, err := ofbfake.New(ofbfake.Config{Now: now.Now})
	require.NoError(t, err)
	require.NoError(t, fake.Start())
	t.Cleanup(func() { require.NoError(t, fake.Close()) })

	return &clientBundle{clock: now, client: newClient(t, fake, orgA, now, 0), fake: fake}
}

func newClient(t *testing.T, fake *ofbfake.Server, orgID string, now *clock, timeout time.Duration) *ofb.Client {
	t.Helper()
	cert, _, _, err := fake.IssueClientCertificate(orgID)
	require.NoError(t, err)
	client, err := ofb.NewClient(ofb.Config{
		BaseURL:     fake.URL(),
		Certificate: cert,
		ClientID:    ssA,
		Now:         now.Now,
		RootCAs:     fake.RootCAs(),
		Timeout:     timeout,
		TokenURL:    fake.URL(),
	})
	require.NoError(t, err)
	return client
}

// serverReport is a SERVER report of orgA at the given time.
func serverReport(at time.Time) ofb.Report {
	return ofb.Report{
		ClientOrgID:       orgB,
		Endpoint:          "/open-banking/accounts/v2/accounts/{accountId}/transactions",
		FAPIInteractionID: uuid.NewString(),
		HTTPMethod:        http.MethodGet,
		ProcessTimespan:   87,
		Role:              ofb.RoleServer,
		ServerOrgID:       orgA,
		StatusCode:        http.StatusOK,
		Timestamp:         at,
	}
}

// clientReport is a CLIENT report of orgA at the given time.
func clientReport(at time.Time) ofb.Report {
	return ofb.Report{
		AdditionalInfo:    map[string]any{"personType": "PF", "consentId": "urn:bank:c1"},
		ClientOrgID:       orgA,
		ClientSSID:        ssA,
		CorrelationID:     "journey-42",
		Endpoint:          "/open-banking/consents/v3/consents",
		EndpointURIPrefix: "https://api.bank-b.example",
		FAPIInteractionID: uuid.NewString(),
		HTTPMethod:        http.MethodPost,
		ProcessTimespan:   140,
		Role:              ofb.RoleClient,
		ServerOrgID:       orgB,
		StatusCode:        http.StatusCreated,
		Timestamp:         at,
	}
}

func TestNewClient(t *testing.T) {
	t.Parallel()

	t.Run("RequiresHTTPSBaseURL", func(t *testing.T) {
		t.Parallel()
		_, err := ofb.NewClient(ofb.Config{BaseURL: "http://127.0.0.1:1", TokenURL: "https://127.0.0.1:1", ClientID: ssA})
		require.ErrorContains(t, err, "BaseURL")
	})

	t.Run("RequiresTokenURL", func(t *testing.T) {
		t.Parallel()
		_, err := ofb.NewClient(ofb.Config{BaseURL: "https://127.0.0.1:1", ClientID: ssA})
		require.ErrorContains(t, err, "TokenURL")
	})

	t.Run("RequiresCertificate", func(t *testing.T) {
		t.Parallel()
		_, err := ofb.NewClient(ofb.Config{BaseURL: "https://127.0.0.1:1", TokenURL: "https://127.0.0.1:1", ClientID: ssA})
		require.ErrorContains(t, err, "Certificate")
	})
}

func TestPostReports(t *testing.T) {
	t.Parallel()

	t.Run("MixedBatchIsAcceptedInOrder", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		now := bundle.clock.Now()
		reports := []ofb.Report{clientReport(now), serverReport(now), clientReport(now.Add(-time.Hour))}

		result, err := bundle.client.PostReports(context.Background(), reports)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, result.StatusCode)
		require.Len(t, result.Items, 3)
		ids := map[string]bool{}
		for i, item := range result.Items {
			require.Equal(t, ofb.StatusAccepted, item.Status, "item %d", i)
			require.NoError(t, uuid.Validate(item.ReportID), "item %d", i)
			ids[item.ReportID] = true
		}
		require.Len(t, ids, 3)
		require.Equal(t, "journey-42", result.Items[0].CorrelationID)
		require.Empty(t, result.Items[1].CorrelationID)

		accepted := bundle.fake.Accepted()
		require.Len(t, accepted, 3)
		for i := range reports {
			require.Equal(t, reports[i].FAPIInteractionID, accepted[i].FAPIInteractionID)
			require.Equal(t, reports[i].Timestamp.Truncate(time.Millisecond).UTC(), accepted[i].Timestamp)
		}
		require.Equal(t, reports[0].AdditionalInfo, accepted[0].AdditionalInfo)
		require.Empty(t, bundle.fake.Violations())
	})

	t.Run("TooOldTimestampIsDiscarded", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		now := bundle.clock.Now()
		reports := []ofb.Report{serverReport(now), serverReport(now.Add(-7*24*time.Hour - time.Minute))}

		result, err := bundle.client.PostReports(context.Background(), reports)
		require.NoError(t, err)
		require.Equal(t, http.StatusMultiStatus, result.StatusCode)
		require.Equal(t, ofb.StatusAccepted, result.Items[0].Status)
		require.Equal(t, ofb.StatusDiscarded, result.Items[1].Status)
		require.Contains(t, result.Items[1].Message, "older than 7 days")
		require.Len(t, bundle.fake.Accepted(), 1)
		require.Equal(t, 1, bundle.fake.Seen(reports[1].FAPIInteractionID))
	})

	t.Run("FutureTimestampIsDiscarded", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		report := serverReport(bundle.clock.Now().Add(6 * time.Minute))

		result, err := bundle.client.PostReports(context.Background(), []ofb.Report{report})
		require.NoError(t, err)
		require.Equal(t, http.StatusMultiStatus, result.StatusCode)
		require.Contains(t, result.Items[0].Message, "in the future")
	})

	t.Run("WrongOrganisationIsDiscarded", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		now := bundle.clock.Now()
		foreignServer := serverReport(now)
		foreignServer.ServerOrgID = orgB
		foreignServer.ClientOrgID = orgA
		foreignClient := clientReport(now)
		foreignClient.ClientOrgID = orgB
		foreignClient.ServerOrgID = orgA

		result, err := bundle.client.PostReports(context.Background(),
			[]ofb.Report{foreignServer, serverReport(now), foreignClient})
		require.NoError(t, err)
		require.Equal(t, http.StatusMultiStatus, result.StatusCode)
		require.Equal(t, ofb.StatusDiscarded, result.Items[0].Status)
		require.Contains(t, result.Items[0].Message, "organisation")
		require.Equal(t, ofb.StatusAccepted, result.Items[1].Status)
		require.Equal(t, ofb.StatusDiscarded, result.Items[2].Status)
		require.Empty(t, bundle.fake.Violations())
	})

	t.Run("SpecInvalidItemIsBadRequest", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		invalid := serverReport(bundle.clock.Now())
		invalid.HTTPMethod = "FETCH"

		result, err := bundle.client.PostReports(context.Background(), []ofb.Report{invalid})
		var statusErr *ofb.StatusError
		require.ErrorAs(t, err, &statusErr)
		require.Equal(t, http.StatusBadRequest, statusErr.StatusCode)
		require.Contains(t, statusErr.Message, "httpMethod")
		require.False(t, statusErr.Temporary())
		require.Equal(t, http.StatusBadRequest, result.StatusCode)
		require.Len(t, bundle.fake.Violations(), 1)
		require.Zero(t, bundle.fake.Seen(invalid.FAPIInteractionID))
	})

	t.Run("BatchSizeIsCheckedBeforeSending", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		reports := make([]ofb.Report, ofb.MaxBatchSize+1)
		for i := range reports {
			reports[i] = serverReport(bundle.clock.Now())
		}

		_, err := bundle.client.PostReports(context.Background(), reports)
		require.ErrorIs(t, err, ofb.ErrBatchSize)
		_, err = bundle.client.PostReports(context.Background(), nil)
		require.ErrorIs(t, err, ofb.ErrBatchSize)
		require.Zero(t, bundle.fake.Requests())
	})

	t.Run("TooManyRequestsCarriesRetryAfterSeconds", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		bundle.fake.QueueFaults(ofbfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "7"})

		result, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		var statusErr *ofb.StatusError
		require.ErrorAs(t, err, &statusErr)
		require.Equal(t, http.StatusTooManyRequests, statusErr.StatusCode)
		require.Equal(t, 7*time.Second, statusErr.RetryAfter)
		require.Equal(t, 7*time.Second, result.RetryAfter)
		require.Equal(t, "Too Many Requests", result.Message)
		require.True(t, statusErr.Temporary())
	})

	t.Run("RetryAfterAsHTTPDate", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		date := bundle.clock.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
		bundle.fake.QueueFaults(ofbfake.Fault{Status: http.StatusServiceUnavailable, RetryAfter: date})

		result, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		require.Error(t, err)
		// HTTP dates have whole seconds, so up to one second is lost.
		require.InDelta(t, 90*time.Second, result.RetryAfter, float64(time.Second))
	})

	t.Run("ServerErrorIsTemporary", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		bundle.fake.QueueFaults(ofbfake.Fault{Status: http.StatusInternalServerError})

		_, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		var statusErr *ofb.StatusError
		require.ErrorAs(t, err, &statusErr)
		require.Equal(t, http.StatusInternalServerError, statusErr.StatusCode)
		require.Zero(t, statusErr.RetryAfter)
		require.True(t, statusErr.Temporary())
	})

	t.Run("ShortResultArrayIsMismatch", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		bundle.fake.QueueFaults(ofbfake.Fault{
			Status: http.StatusOK,
			Body:   json.RawMessage(`[{"reportId":"0f3fcceb-39f6-41b4-a75d-8444244bd836","status":"ACCEPTED"}]`),
		})
		now := bundle.clock.Now()

		result, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(now), serverReport(now)})
		require.ErrorIs(t, err, ofb.ErrResponseMismatch)
		require.Len(t, result.Items, 1)
	})

	t.Run("TimeoutIsTransportError", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		client := newClient(t, bundle.fake, orgA, bundle.clock, 200*time.Millisecond)
		bundle.fake.QueueFaults(ofbfake.Fault{Delay: 2 * time.Second})

		_, err := client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		require.ErrorIs(t, err, ofb.ErrTransport)
	})
}

func TestToken(t *testing.T) {
	t.Parallel()

	t.Run("CachedAcrossRequests", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		for range 3 {
			_, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
			require.NoError(t, err)
		}
		require.Equal(t, 1, bundle.fake.TokenRequests())
	})

	t.Run("OneTokenRequestForConcurrentPosts", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			wg.Go(func() {
				_, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, 1, bundle.fake.TokenRequests())
		require.Len(t, bundle.fake.Accepted(), 20)
	})

	t.Run("RefreshedWhenTenthOfLifetimeRemains", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		post := func() {
			t.Helper()
			_, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
			require.NoError(t, err)
		}

		post()
		// A 6-hour token is refreshed when less than 36 minutes remain.
		bundle.clock.Advance(5*time.Hour + 20*time.Minute)
		post()
		require.Equal(t, 1, bundle.fake.TokenRequests())
		bundle.clock.Advance(5 * time.Minute)
		post()
		require.Equal(t, 2, bundle.fake.TokenRequests())
		require.Zero(t, bundle.fake.FreshTokenRequests())
	})

	t.Run("RevokedTokenIsRefreshedOnUnauthorized", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		_, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		require.NoError(t, err)
		bundle.fake.RevokeTokens()

		result, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, result.StatusCode)
		require.Equal(t, 1, bundle.fake.FreshTokenRequests())
		require.Equal(t, 2, bundle.fake.TokenRequests())
		require.Equal(t, 3, bundle.fake.Requests())
	})

	t.Run("UnauthorizedTwiceIsStatusError", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		bundle.fake.QueueFaults(ofbfake.Fault{Status: http.StatusUnauthorized}, ofbfake.Fault{Status: http.StatusUnauthorized})

		_, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		var statusErr *ofb.StatusError
		require.ErrorAs(t, err, &statusErr)
		require.Equal(t, http.StatusUnauthorized, statusErr.StatusCode)
		require.Equal(t, 1, bundle.fake.FreshTokenRequests())
		require.Equal(t, 2, bundle.fake.Requests())
	})

	t.Run("RefreshTokenUsesTokenFresh", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		require.NoError(t, bundle.client.RefreshToken(context.Background()))
		_, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		require.NoError(t, err)
		require.Equal(t, 1, bundle.fake.FreshTokenRequests())
		require.Equal(t, 1, bundle.fake.TokenRequests())
	})

	t.Run("ForeignCertificateFailsTokenCall", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		other, err := ofbfake.New(ofbfake.Config{})
		require.NoError(t, err)
		// The certificate of another CA fails the TLS handshake of the token
		// call, so no report request is made.
		cert, _, _, err := other.IssueClientCertificate(orgA)
		require.NoError(t, err)
		client, err := ofb.NewClient(ofb.Config{
			BaseURL: bundle.fake.URL(), Certificate: cert, ClientID: ssA,
			RootCAs: bundle.fake.RootCAs(), TokenURL: bundle.fake.URL(),
		})
		require.NoError(t, err)

		_, err = client.PostReports(context.Background(), []ofb.Report{serverReport(bundle.clock.Now())})
		require.ErrorIs(t, err, ofb.ErrTransport)
		require.Zero(t, bundle.fake.Requests())
	})
}

func TestGetReport(t *testing.T) {
	t.Parallel()

	t.Run("FoundAfterPost", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		report := serverReport(bundle.clock.Now())
		result, err := bundle.client.PostReports(context.Background(), []ofb.Report{report})
		require.NoError(t, err)

		found, body, err := bundle.client.GetReport(context.Background(), report.FAPIInteractionID)
		require.NoError(t, err)
		require.True(t, found)
		var model map[string]any
		require.NoError(t, json.Unmarshal(body, &model))
		require.Equal(t, result.Items[0].ReportID, model["reportId"])
		require.Equal(t, ofb.StatusAccepted, model["status"])
		require.Equal(t, report.FAPIInteractionID, model["fapiInteractionId"])
		require.Empty(t, bundle.fake.Violations())
	})

	t.Run("UnknownIDIsNotFound", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		found, body, err := bundle.client.GetReport(context.Background(), uuid.NewString())
		require.NoError(t, err)
		require.False(t, found)
		require.Nil(t, body)
	})

	t.Run("BothSidesArePaired", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		clientB := newClient(t, bundle.fake, orgB, bundle.clock, 0)
		serverSide := serverReport(bundle.clock.Now())
		clientSide := ofb.Report{
			AdditionalInfo:    map[string]any{},
			ClientOrgID:       orgB,
			ClientSSID:        ssA,
			Endpoint:          serverSide.Endpoint,
			EndpointURIPrefix: "https://api.bank-a.example",
			FAPIInteractionID: serverSide.FAPIInteractionID,
			HTTPMethod:        serverSide.HTTPMethod,
			ProcessTimespan:   95,
			Role:              ofb.RoleClient,
			ServerOrgID:       orgA,
			StatusCode:        serverSide.StatusCode,
			Timestamp:         serverSide.Timestamp,
		}
		_, err := bundle.client.PostReports(context.Background(), []ofb.Report{serverSide})
		require.NoError(t, err)
		result, err := clientB.PostReports(context.Background(), []ofb.Report{clientSide})
		require.NoError(t, err)

		found, body, err := bundle.client.GetReport(context.Background(), serverSide.FAPIInteractionID)
		require.NoError(t, err)
		require.True(t, found)
		var model map[string]any
		require.NoError(t, json.Unmarshal(body, &model))
		require.Equal(t, "PAIRED", model["status"])
		require.Equal(t, result.Items[0].ReportID, model["pairedReportId"])
		require.Equal(t, ofb.RoleServer, model["role"])
	})

	t.Run("OtherOrganisationsReportIsNotFound", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		orgC := "44444444-4444-4444-8444-444444444444"
		clientC := newClient(t, bundle.fake, orgC, bundle.clock, 0)
		report := serverReport(bundle.clock.Now())
		_, err := bundle.client.PostReports(context.Background(), []ofb.Report{report})
		require.NoError(t, err)

		found, _, err := clientC.GetReport(context.Background(), report.FAPIInteractionID)
		require.NoError(t, err)
		require.False(t, found)
	})

	t.Run("ForcedErrorIsStatusError", func(t *testing.T) {
		t.Parallel()
		bundle := setupClient(t)
		bundle.fake.QueueFaults(ofbfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "2"})
		_, _, err := bundle.client.GetReport(context.Background(), uuid.NewString())
		var statusErr *ofb.StatusError
		require.True(t, errors.As(err, &statusErr))
		require.Equal(t, http.StatusTooManyRequests, statusErr.StatusCode)
		require.Equal(t, 2*time.Second, statusErr.RetryAfter)
	})
}
