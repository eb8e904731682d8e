package canonicaljson_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/canonicaljson"
)

func TestMarshal(t *testing.T) {
	t.Parallel()

	first, err := canonicaljson.Marshal([]byte(`{ "b": 1.50, "a": {"y": [1, "<x>"], "x": null} }`))
	require.NoError(t, err)
	require.Equal(t, `{"a":{"x":null,"y":[1,"<x>"]},"b":1.50}`, string(first))

	second, err := canonicaljson.Marshal([]byte(`{"a":{"y":[1,"<x>"],"x":null},"b":1.50}`))
	require.NoError(t, err)
	require.Equal(t, canonicaljson.SHA256(first), canonicaljson.SHA256(second))

	_, err = canonicaljson.Marshal([]byte(`{"a":`))
	require.Error(t, err)
}
