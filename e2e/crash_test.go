package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/threadline/threadline/internal/freeport"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// buildThreadline builds the all-in-one binary once per test binary run.
var buildThreadline = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "threadline-e2e-bin")
	if err != nil {
		return "", err
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	bin := filepath.Join(dir, "threadline")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/threadline")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

// freePort returns a loopback address for a child process to listen on.
func freePort(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Addr()
	require.NoError(t, err)
	return addr
}

// process is the all-in-one binary running as a child process.
type process struct {
	cmd                   *exec.Cmd
	otlpGRPC, query, logf string
}

func startProcess(t *testing.T, bin, dataDir string, ports map[string]string, extra ...string) *process {
	t.Helper()
	logf := filepath.Join(dataDir, fmt.Sprintf("threadline-%d.log", time.Now().UnixNano()))
	f, err := os.Create(logf)
	require.NoError(t, err)
	defer f.Close()
	args := append([]string{
		"--data-dir", dataDir,
		"--otlp-grpc-addr", ports["grpc"], "--otlp-http-addr", ports["http"],
		"--kafka-addr", ports["kafka"], "--indexer-grpc-addr", ports["indexer"], "--http-addr", ports["query"],
		"--decision-wait", "300ms", "--sampling-baseline", "1", "--log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(t, cmd.Start())
	p := &process{cmd: cmd, otlpGRPC: ports["grpc"], query: "http://" + ports["query"], logf: logf}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			// The data dir, and the log in it, go with the test.
			out, _ := os.ReadFile(logf)
			t.Logf("threadline log (%s):\n%s", logf, out[max(0, len(out)-8<<10):])
		}
	})
	aio := &allInOne{query: p.query}
	aio.waitReady(t)
	return p
}

// TestKill9LosesNothingAcknowledged streams traces into the all-in-one, kills
// it with SIGKILL mid-stream, restarts it on the same data dir, and checks
// every trace the client saw acknowledged is there, each span exactly once.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin, err := buildThreadline()
	require.NoError(t, err)
	dir := t.TempDir()
	ports := map[string]string{"grpc": freePort(t), "http": freePort(t), "kafka": freePort(t), "indexer": freePort(t), "query": freePort(t)}
	p := startProcess(t, bin, dir, ports)

	conn, err := grpc.NewClient(p.otlpGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := collectortracepb.NewTraceServiceClient(conn)

	const spansPerTrace = 4
	var (
		mu    sync.Mutex
		acked []string
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, ids := makeRequest(10, spansPerTrace)
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := client.Export(cctx, req)
				ccancel()
				if err != nil {
					continue // not acknowledged: the client would retry; we don't count it
				}
				mu.Lock()
				for _, id := range ids {
					acked = append(acked, hexID(id))
				}
				mu.Unlock()
			}
		}()
	}
	// Let the stream run long enough that some traces are written and some
	// are still buffered or in Kafka when the kill comes.
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 2000 }, 60*time.Second, 10*time.Millisecond)
	time.Sleep(700 * time.Millisecond)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	_ = p.cmd.Wait()
	cancel()
	wg.Wait()
	mu.Lock()
	ackedIDs := append([]string(nil), acked...)
	mu.Unlock()
	t.Logf("%d traces acknowledged before SIGKILL", len(ackedIDs))

	p2 := startProcess(t, bin, dir, ports)
	for _, id := range ackedIDs {
		td := waitTrace(t, p2.query, id, spansPerTrace)
		seen := map[string]bool{}
		for _, rs := range td.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					sid := hexID(s.GetSpanId())
					require.False(t, seen[sid], "span %s of trace %s returned twice", sid, id)
					seen[sid] = true
				}
			}
		}
	}
	require.NoError(t, p2.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, p2.cmd.Wait(), "graceful shutdown exits 0")
}
