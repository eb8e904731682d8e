package jobs_test

import (
	"os"
	"testing"

	"github.com/finnest/eventruntime/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
