package ofb_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/regulator/ofb"
)

func TestAllowlistTemplate(t *testing.T) {
	t.Parallel()
	list := ofb.PrivateReportsAllowlist()

	cases := []struct {
		name     string
		path     string
		template string
	}{
		{"ExactPath", "/open-banking/accounts/v2/accounts", "/open-banking/accounts/v2/accounts"},
		{"OneID", "/open-banking/accounts/v2/accounts/acc-123/transactions",
			"/open-banking/accounts/v2/accounts/{accountId}/transactions"},
		{"TwoIDs", "/open-banking/credit-cards-accounts/v2/accounts/cc-9/bills/b-7/transactions",
			"/open-banking/credit-cards-accounts/v2/accounts/{creditCardAccountId}/bills/{billId}/transactions"},
		{"LiteralWinsOverID", "/open-banking/payments/v4/pix/payments/consents/urn:bank:1",
			"/open-banking/payments/v4/pix/payments/consents/{consentId}"},
		{"IDWhereLiteralDoesNotFit", "/open-banking/payments/v4/pix/payments/pay-1",
			"/open-banking/payments/v4/pix/payments/{paymentId}"},
		{"IDThatLooksLikeLiteral", "/open-banking/payments/v4/pix/payments/consents",
			"/open-banking/payments/v4/pix/payments/{paymentId}"},
		{"DoubleSlashTemplateKeptVerbatim", "/open-banking/payments/v4/consents/c-1/pix/payments",
			"/open-banking/payments/v4//consents/{consentId}/pix/payments"},
		{"QueryIgnored", "/open-banking/accounts/v2/accounts/acc-1/balances?page=2",
			"/open-banking/accounts/v2/accounts/{accountId}/balances"},
		{"TrailingSlashIgnored", "/open-banking/consents/v3/consents/", "/open-banking/consents/v3/consents"},
		{"PrefixIgnored", "/opbk/open-banking/resources/v3/resources", "/open-banking/resources/v3/resources"},
		{"RootEndpoint", "/token", "/token"},
		{"RegisterWithID", "/register/client-1", "/register/{clientId}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			template, ok := list.Template(tc.path)
			require.True(t, ok)
			require.Equal(t, tc.template, template)
			require.True(t, list.Contains(template))
		})
	}

	for _, path := range []string{
		"/open-banking/accounts/v2/unknown",
		"/open-banking/accounts/v1/accounts",
		"/open-banking/accounts/v2/accounts/a/transactions/extra",
		"/open-banking/channels/v2/branches", // open data, another report API
		"/",
		"",
	} {
		t.Run("Unknown"+path, func(t *testing.T) {
			t.Parallel()
			template, ok := list.Template(path)
			require.False(t, ok)
			require.Empty(t, template)
		})
	}
}

func TestAllowlistContains(t *testing.T) {
	t.Parallel()
	list := ofb.PrivateReportsAllowlist()

	require.True(t, list.Contains("/open-banking/payments/v4//consents/{consentId}/pix/payments"))
	require.False(t, list.Contains("/open-banking/payments/v4/consents/{consentId}/pix/payments"))
	require.False(t, list.Contains("/open-banking/accounts/v2/accounts/123"))
	require.False(t, list.Contains("/open-banking/channels/v2/branches"))
}

func TestAllowlistEndpoints(t *testing.T) {
	t.Parallel()

	private := ofb.PrivateReportsAllowlist().Endpoints()
	require.Len(t, private, 101)
	require.Equal(t, "/open-banking/accounts/v2/accounts", private[0])

	openData, err := ofb.ParseAllowlist(regulator.OFBEndpointsTSV(), ofb.SectionOpenData)
	require.NoError(t, err)
	require.Len(t, openData.Endpoints(), 30)

	portability, err := ofb.ParseAllowlist(regulator.OFBEndpointsTSV(), ofb.SectionCreditPortability)
	require.NoError(t, err)
	require.Len(t, portability.Endpoints(), 5)
}

func TestParseAllowlistErrors(t *testing.T) {
	t.Parallel()
	header := "# comment\nsection\tfamily\tendpoint\n"

	cases := []struct {
		name string
		tsv  string
		want string
	}{
		{"MissingHeader", "s\tf\t/a\n", "invalid header"},
		{"WrongFieldCount", header + "s\t/a\n", "want 3"},
		{"Duplicate", header + "s\tf\t/a\ns\tf\t/a\n", "duplicate"},
		{"SameShape", header + "s\tf\t/a/{x}\ns\tf\t/a/{y}\n", "matches the same paths"},
		{"NoLeadingSlash", header + "s\tf\ta\n", "slash"},
		{"EmptySection", header + "other\tf\t/a\n", "no endpoints"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ofb.ParseAllowlist([]byte(tc.tsv), "s")
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func BenchmarkAllowlistTemplate(b *testing.B) {
	list := ofb.PrivateReportsAllowlist()
	for b.Loop() {
		if _, ok := list.Template("/open-banking/credit-cards-accounts/v2/accounts/cc-9/bills/b-7/transactions"); !ok {
			b.Fatal("no match")
		}
	}
}
