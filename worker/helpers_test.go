package worker_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/outbox"
)

func interactionID(t *testing.T, event *outbox.Event) string {
	t.Helper()
	var interaction outbox.Interaction
	require.NoError(t, json.Unmarshal(event.Payload, &interaction))
	return interaction.FAPIInteractionID
}
