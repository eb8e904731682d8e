// Package testbin builds the eventruntime command once per test process, for
// tests that run it as a subprocess to signal or kill it.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	once sync.Once
	dir  string
	path string
	err  error
)

// Path returns the path of a freshly built eventruntime binary, building it
// on the first call. The test fails if the build fails.
func Path(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		dir, err = os.MkdirTemp("", "eventruntime-bin-")
		if err != nil {
			return
		}
		path = filepath.Join(dir, "eventruntime")
		_, file, _, _ := runtime.Caller(0)
		source := filepath.Join(filepath.Dir(file), "..", "..", "cmd", "eventruntime")
		var out []byte
		if out, err = exec.Command("go", "build", "-o", path, source).CombinedOutput(); err != nil {
			t.Logf("go build: %s", out)
		}
	})
	if err != nil {
		t.Fatalf("go build of eventruntime failed: %v", err)
	}
	return path
}

// Remove deletes the binary. Call it from TestMain after the tests have run.
func Remove() {
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
}
