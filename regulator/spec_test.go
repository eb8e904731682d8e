package regulator_test

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/regulator"
)

// The digests of the upstream files, so that an edit to the embedded copies
// fails here.
func TestEmbeddedFilesMatchUpstream(t *testing.T) {
	t.Parallel()

	digest := func(data []byte) string {
		sum := sha256.Sum256(data)
		return hex.EncodeToString(sum[:])
	}
	require.Equal(t, "8e91d95b985a6ec4a8cbae41c2df165bea6da16b32eafaaa9eaf71993f383c2a",
		digest(regulator.OFBSpec()))
	require.Equal(t, "5659da8cfffaa5ae676318cdf87d78e588219894eeacc94389ae0173382b98a7",
		digest(regulator.OFBEndpointsTSV()))
}
