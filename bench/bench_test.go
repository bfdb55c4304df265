// Package bench measures Threadline as a user runs it: real binaries in their
// own processes, fed by the pre-encoding load generator from another process
// so the client is never the bottleneck. CPU and memory are read from /proc
// for the measured process only.
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/   (or: make bench)
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/internal/freeport"
)

// The span shape of every run: 512 spans per request, 5 spans per trace,
// 10 attributes per span, 3 resources per request.
var loadShape = []string{"--spans-per-request", "512", "--spans-per-trace", "5", "--attrs", "10", "--resources", "3", "--concurrency", "8"}

// binDir is where buildBinaries put the binaries (about 120 MB), removed by
// TestMain once the benchmarks are done.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var buildBinaries = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "threadline-bench-bin")
	if err != nil {
		return "", err
	}
	binDir = dir
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/collector", "./cmd/threadline", "./cmd/loadgen")
	cmd.Dir = filepath.Dir(filepath.Dir(file))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return dir, nil
})

func freePort(b *testing.B) string {
	addr, err := freeport.Addr()
	require.NoError(b, err)
	return addr
}

// procCPU is the process's user+system CPU time so far.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// peakRSS is the process's high-water resident set (VmHWM).
func peakRSS(pid int) (int64, error) { return procStatus(pid, "VmHWM") }

// procStatus reads one kB field of /proc/pid/status, in bytes.
func procStatus(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// sampleAnonRSS polls the process's anonymous resident memory (RssAnon)
// until stop is called, which returns the highest seen. VmHWM also counts
// the pages of files the process maps (Badger maps its value log and
// tables), which the kernel reclaims at will; RssAnon is what it cannot.
func sampleAnonRSS(pid int) (stop func() int64) {
	done, peak := make(chan struct{}), make(chan int64)
	go func() {
		var hi int64
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, err := procStatus(pid, "RssAnon"); err == nil {
				hi = max(hi, v)
			}
			select {
			case <-done:
				peak <- hi
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 { close(done); return <-peak }
}

// profileDir, when set, makes each benchmark save profiles of the measured
// process under load there, for go tool pprof: name.cpu.pprof and, taken
// right after it, name.heap.pprof (live heap as of the last GC).
var profileDir = os.Getenv("THREADLINE_BENCH_PROFILE_DIR")

// profileUnderLoad profiles the CPU of the process serving adminURL for
// seconds, after the load has run for a second, then its heap; wait blocks
// until both are saved. Without profileDir it does nothing; with it, the
// measured CPU includes the profiler's own (a few percent).
func profileUnderLoad(b *testing.B, adminURL, name string, seconds int) (wait func()) {
	if profileDir == "" {
		return func() {}
	}
	errc := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		err := savePprof(adminURL+"/debug/pprof/profile?seconds="+strconv.Itoa(seconds), filepath.Join(profileDir, name+".cpu.pprof"))
		if err == nil {
			err = savePprof(adminURL+"/debug/pprof/heap", filepath.Join(profileDir, name+".heap.pprof"))
		}
		errc <- err
	}()
	return func() { require.NoError(b, <-errc, "profiling %s", name) }
}

func savePprof(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	return errors.Join(err, f.Close())
}

func startProc(b *testing.B, bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if profileDir != "" {
		cmd.Env = append(os.Environ(), "THREADLINE_PPROF=1")
	}
	require.NoError(b, cmd.Start())
	b.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

func waitHTTP(b *testing.B, url string) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("%s never answered 200", url)
}

type loadReport struct {
	SpansAcked     int64   `json:"spans_acked"`
	RequestsFailed int64   `json:"requests_failed"`
	Duration       float64 `json:"duration_seconds"`
	RequestBytes   int     `json:"request_bytes"`
}

// runLoad sends totalSpans with loadgen in the benchmarks' shape; extra
// are more loadgen flags.
func runLoad(b *testing.B, dir, endpoint string, totalSpans int, extra ...string) loadReport {
	args := append([]string{"--endpoint", endpoint, "--total-spans", strconv.Itoa(totalSpans)}, loadShape...)
	args = append(args, extra...)
	out, err := exec.Command(filepath.Join(dir, "loadgen"), args...).Output()
	require.NoError(b, err, string(out))
	var r loadReport
	require.NoError(b, json.Unmarshal(out, &r), string(out))
	require.Greater(b, r.SpansAcked, int64(0))
	return r
}

// BenchmarkCollectorIngest: OTLP gRPC → collector → Kafka (acks=all), the
// collector's own CPU per span. The broker runs in this test process so its
// CPU is not counted, as an external Kafka's would not be.
func BenchmarkCollectorIngest(b *testing.B) {
	dir, err := buildBinaries()
	require.NoError(b, err)
	emb := bus.DefaultEmbeddedConfig()
	emb.Addr, emb.DataDir, emb.SyncWrites = "127.0.0.1:0", b.TempDir(), false
	broker, err := bus.StartEmbedded(context.Background(), emb, bus.DefaultConfig().Topics(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(b, err)
	defer broker.Close()
	grpcAddr, admin := freePort(b), freePort(b)
	cmd := startProc(b, filepath.Join(dir, "collector"), "--kafka-brokers", broker.Addr(), "--otlp-grpc-addr", grpcAddr,
		"--otlp-http-addr", freePort(b), "--admin-addr", admin, "--log-level", "warn")
	waitHTTP(b, "http://"+admin+"/healthz")
	runLoad(b, dir, grpcAddr, 200_000) // warm up
	for b.Loop() {
		cpu0, err := procCPU(cmd.Process.Pid)
		require.NoError(b, err)
		profiled := profileUnderLoad(b, "http://"+admin, "collector", 3)
		r := runLoad(b, dir, grpcAddr, 2_000_000)
		cpu1, err := procCPU(cmd.Process.Pid)
		require.NoError(b, err)
		rss, err := peakRSS(cmd.Process.Pid)
		require.NoError(b, err)
		profiled() // after the readings: waiting for the profiler is not load
		cpu := (cpu1 - cpu0).Seconds()
		b.ReportMetric(cpu/float64(r.SpansAcked)*1e5, "cpu-s/100k-spans")
		b.ReportMetric(float64(r.SpansAcked)/cpu, "spans/s/core")
		b.ReportMetric(float64(r.SpansAcked)/r.Duration, "spans/s")
		b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
		b.Logf("collector: %d spans acked in %.1fs (%d failed requests, %d B/request), %.2f CPU-s", r.SpansAcked, r.Duration, r.RequestsFailed, r.RequestBytes, cpu)
	}
	require.NoError(b, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(b, cmd.Wait())
}

// BenchmarkEndToEnd: the all-in-one keeping every trace, from OTLP ingest to
// queryable in Badger: throughput, CPU per span (collector + broker + indexer +
// query in one process), peak RSS and bytes per stored span.
func BenchmarkEndToEnd(b *testing.B) { endToEnd(b, 0) }

// BenchmarkEndToEndPaced is BenchmarkEndToEnd with the load paced at 85k
// spans/s, so that about 78k spans/s are queryable end to end (the rate
// counts the decision wait and the last writes), just above the target's
// 75k: the CPU per span at that rate, where batches are thinner than at
// full speed and cost more per span.
func BenchmarkEndToEndPaced(b *testing.B) { endToEnd(b, 85_000) }

// endToEnd runs the end-to-end benchmark with the load at rate spans/s
// (0: as fast as the all-in-one acknowledges).
func endToEnd(b *testing.B, rate int) {
	var pace []string
	profile := "threadline"
	if rate > 0 {
		pace = []string{"--rate", strconv.Itoa(rate)}
		profile = fmt.Sprintf("threadline-paced-%dk", rate/1000)
	}
	dir, err := buildBinaries()
	require.NoError(b, err)
	for b.Loop() {
		data := b.TempDir()
		grpcAddr, query := freePort(b), freePort(b)
		cmd := startProc(b, filepath.Join(dir, "threadline"), "--data-dir", data, "--otlp-grpc-addr", grpcAddr,
			"--otlp-http-addr", freePort(b), "--kafka-addr", freePort(b), "--indexer-grpc-addr", freePort(b),
			"--http-addr", query, "--decision-wait", "1s", "--sampling-baseline", "1", "--log-level", "warn")
		waitHTTP(b, "http://"+query+"/readyz")
		total := endToEndSpans(b)
		cpu0, err := procCPU(cmd.Process.Pid)
		require.NoError(b, err)
		start := time.Now()
		stopAnon := sampleAnonRSS(cmd.Process.Pid)
		profiled := profileUnderLoad(b, "http://"+query, profile, 12)
		r := runLoad(b, dir, grpcAddr, total, pace...)
		written := waitWritten(b, "http://"+query+"/metrics", r.SpansAcked)
		elapsed := time.Since(start)
		anon := stopAnon()
		cpu1, err := procCPU(cmd.Process.Pid)
		require.NoError(b, err)
		rss, err := peakRSS(cmd.Process.Pid)
		require.NoError(b, err)
		profiled() // after the readings: waiting for the profiler is not load
		require.Positive(b, anon, "no RssAnon sample")
		require.NoError(b, cmd.Process.Signal(syscall.SIGTERM))
		require.NoError(b, cmd.Wait())
		disk := dirSize(b, filepath.Join(data, "spans"))
		cpu := (cpu1 - cpu0).Seconds()
		b.ReportMetric(float64(written)/elapsed.Seconds(), "spans/s")
		b.ReportMetric(cpu/float64(written)*1e5, "cpu-s/100k-spans")
		b.ReportMetric(float64(written)/cpu, "spans/s/core")
		b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(anon)/(1<<20), "peak-anon-RSS-MiB")
		b.ReportMetric(float64(disk)/float64(written), "disk-B/span")
		b.Logf("end to end: %d spans acked, %d written in %.1fs (ingest %.1fs, decision wait 1s), %.2f CPU-s, store %d B",
			r.SpansAcked, written, elapsed.Seconds(), r.Duration, cpu, disk)
	}
}

// endToEndSpans is how many spans BenchmarkEndToEnd sends: 1.5M, or
// THREADLINE_BENCH_SPANS. A longer run (6M, about two minutes) shows
// whether memory settles or keeps growing with the stored data.
func endToEndSpans(b *testing.B) int {
	v := os.Getenv("THREADLINE_BENCH_SPANS")
	if v == "" {
		return 1_500_000
	}
	n, err := strconv.Atoi(v)
	require.NoError(b, err, "THREADLINE_BENCH_SPANS")
	require.Positive(b, n, "THREADLINE_BENCH_SPANS")
	return n
}

// waitWritten polls the indexer's spans-written counter until it reaches want.
func waitWritten(b *testing.B, metricsURL string, want int64) int64 {
	deadline := time.Now().Add(5 * time.Minute)
	var got int64
	for time.Now().Before(deadline) {
		resp, err := http.Get(metricsURL)
		require.NoError(b, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if rest, ok := strings.CutPrefix(line, "threadline_indexer_spans_written_total "); ok {
				f, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
				got = int64(f)
			}
		}
		if got >= want {
			return got
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Fatalf("only %d of %d spans written after 5 minutes", got, want)
	return got
}

func dirSize(b *testing.B, dir string) int64 {
	var n int64
	require.NoError(b, filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return err
	}))
	return n
}
