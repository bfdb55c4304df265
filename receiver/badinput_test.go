package receiver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

const testMaxBytes = 64 << 10

var errKafkaDown = errors.New("kafka: all brokers unreachable")

// zeroIDRequest has one valid span and two with an all-zero trace ID.
func zeroIDRequest() *coltracepb.ExportTraceServiceRequest {
	req := buildRequest(1, 3)
	spans := req.ResourceSpans[0].ScopeSpans[0].Spans
	spans[1].TraceId = make([]byte, 16)
	spans[2].TraceId = make([]byte, 16)
	return req
}

func TestHTTPBadInput(t *testing.T) {
	cfg := testConfig()
	cfg.MaxRequestBytes = testMaxBytes
	cfg.RetryAfter = 1500 * time.Millisecond
	r := startReceiver(t, cfg)
	client := newHTTPClient(t)

	good := marshal(t, buildRequest(2, 2))
	bomb := gzipBytes(t, make([]byte, 8<<20)) // 8 MiB of zeros in a few KiB

	type tc struct {
		name        string
		method      string // default POST
		path        string // default /v1/traces
		contentType string // default protobuf
		encoding    string
		body        []byte
		pubErr      error

		wantStatus     int
		wantRetryAfter string
		wantMsg        string // in the google.rpc.Status (or text) body
		wantRejected   int64  // partial success
		wantPublished  int    // batches the publisher got
	}
	cases := []tc{
		{name: "good", body: good, wantStatus: 200, wantPublished: 2},
		{name: "good gzip", encoding: "gzip", body: gzipBytes(t, good), wantStatus: 200, wantPublished: 2},
		{name: "malformed protobuf", body: []byte{0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01}, wantStatus: 400, wantMsg: "decode ExportTraceServiceRequest"},
		{name: "malformed json", contentType: "application/json", body: []byte(`{"resourceSpans": [ {`), wantStatus: 400, wantMsg: "OTLP/JSON"},
		// The parser's message quotes the byte; the answer still encodes.
		{name: "json not utf-8", contentType: "application/json", body: []byte("\x9f"), wantStatus: 400, wantMsg: "\uFFFD"},
		{name: "json bad hex id", contentType: "application/json", body: []byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"eee19b7ec3c1b174"}]}]}]}`), wantStatus: 400},
		{name: "bad gzip", encoding: "gzip", body: []byte("not gzip at all"), wantStatus: 400, wantMsg: "read request body"},
		{name: "oversize plain", body: make([]byte, testMaxBytes+1), wantStatus: 413, wantMsg: "limit"},
		{name: "oversize gzip bomb", encoding: "gzip", body: bomb, wantStatus: 413, wantMsg: "decompressed request body exceeds"},
		{name: "zero trace ids", body: marshal(t, zeroIDRequest()), wantStatus: 200, wantRejected: 2, wantMsg: "all-zero", wantPublished: 1},
		{name: "zero trace ids json", contentType: "application/json", body: []byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[
			{"traceId":"00000000000000000000000000000000","spanId":"eee19b7ec3c1b174","name":"a"},
			{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","name":"b"}]}]}]}`),
			wantStatus: 200, wantRejected: 1, wantMsg: "all-zero", wantPublished: 1},
		{name: "wrong content type", contentType: "text/plain", body: good, wantStatus: 415, wantMsg: "unsupported Content-Type"},
		{name: "unsupported content encoding", encoding: "br", body: good, wantStatus: 415, wantMsg: "Content-Encoding"},
		{name: "GET", method: http.MethodGet, wantStatus: 405},
		{name: "unknown path", path: "/v1/spans", body: good, wantStatus: 404},
		{name: "backpressure", body: good, pubErr: fmt.Errorf("produce: %w", ErrBackpressure), wantStatus: 429, wantRetryAfter: "2", wantMsg: "overloaded"},
		{name: "backpressure json", contentType: "application/json", body: []byte(`{}`), wantStatus: 200}, // nothing to publish: the publisher is not asked
		{name: "kafka down", body: good, pubErr: errKafkaDown, wantStatus: 503, wantRetryAfter: "2", wantMsg: "Kafka did not acknowledge"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method, path, ct := c.method, c.path, c.contentType
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = "/v1/traces"
			}
			if ct == "" {
				ct = contentTypeProto
			}
			r.pub.set(c.pubErr, nil)
			defer r.pub.set(nil, nil)

			req, err := http.NewRequest(method, r.httpURL+path, bytes.NewReader(c.body))
			require.NoError(t, err)
			req.Header.Set("Content-Type", ct)
			if c.encoding != "" {
				req.Header.Set("Content-Encoding", c.encoding)
			}
			resp, err := client.Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())

			require.Equal(t, c.wantStatus, resp.StatusCode, string(body))
			require.Equal(t, c.wantRetryAfter, resp.Header.Get("Retry-After"))
			require.Len(t, r.pub.take(), c.wantPublished)

			isJSON := ct == "application/json"
			switch {
			case c.wantStatus == 200:
				require.Equal(t, ct, resp.Header.Get("Content-Type"))
				var out coltracepb.ExportTraceServiceResponse
				if isJSON {
					require.NoError(t, protojson.Unmarshal(body, &out))
				} else {
					require.NoError(t, proto.Unmarshal(body, &out))
				}
				require.Equal(t, c.wantRejected, out.GetPartialSuccess().GetRejectedSpans())
				require.Contains(t, out.GetPartialSuccess().GetErrorMessage(), c.wantMsg)
			case c.wantStatus == 404 || c.wantStatus == 415 && c.contentType == "text/plain":
				require.Contains(t, string(body), c.wantMsg)
			default:
				// OTLP: failures carry a google.rpc.Status in the request's encoding.
				require.Equal(t, ct, resp.Header.Get("Content-Type"))
				var st spb.Status
				if isJSON {
					require.NoError(t, protojson.Unmarshal(body, &st))
				} else {
					require.NoError(t, proto.Unmarshal(body, &st))
				}
				require.NotZero(t, st.Code)
				require.Contains(t, st.Message, c.wantMsg)
			}

			// The server keeps serving after each bad request.
			r.pub.set(nil, nil)
			ok, err := client.Post(r.httpURL+"/v1/traces", contentTypeProto, bytes.NewReader(good))
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, ok.Body)
			require.NoError(t, ok.Body.Close())
			require.Equal(t, http.StatusOK, ok.StatusCode)
			require.Len(t, r.pub.take(), 2)
		})
	}
	require.Equal(t, 0.0, metricValue(r.metrics.inflight))
	require.Equal(t, 1.0, metricValue(r.metrics.requests.WithLabelValues(signalTraces, transportHTTP, "429")))
}

func TestGRPCBadInput(t *testing.T) {
	cfg := testConfig()
	cfg.MaxRequestBytes = testMaxBytes
	r := startReceiver(t, cfg)
	conn := dialGRPC(t, r.grpcAddr)
	good := marshal(t, buildRequest(2, 2))

	type tc struct {
		name   string
		body   []byte
		opts   []grpc.CallOption
		pubErr error
		pubFn  func(context.Context, []span.TraceBatch) error
		ctx    func() (context.Context, context.CancelFunc)

		wantCode      codes.Code
		wantRetryInfo bool
		wantMsg       string
		wantRejected  int64
		wantPublished int
	}
	cases := []tc{
		{name: "good", body: good, wantCode: codes.OK, wantPublished: 2},
		{name: "good gzip", body: good, opts: []grpc.CallOption{grpc.UseCompressor(gzip.Name)}, wantCode: codes.OK, wantPublished: 2},
		{name: "malformed protobuf", body: []byte{0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01}, wantCode: codes.InvalidArgument, wantMsg: "decode ExportTraceServiceRequest"},
		{name: "truncated request", body: good[:len(good)-3], wantCode: codes.InvalidArgument, wantMsg: "malformed"},
		{name: "oversize", body: make([]byte, testMaxBytes+1), wantCode: codes.ResourceExhausted},
		{name: "oversize gzip bomb", body: make([]byte, 8<<20), opts: []grpc.CallOption{grpc.UseCompressor(gzip.Name)}, wantCode: codes.ResourceExhausted},
		{name: "zero trace ids", body: marshal(t, zeroIDRequest()), wantCode: codes.OK, wantRejected: 2, wantMsg: "all-zero", wantPublished: 1},
		{name: "backpressure", body: good, pubErr: fmt.Errorf("produce: %w", ErrBackpressure), wantCode: codes.ResourceExhausted, wantRetryInfo: true, wantMsg: "overloaded"},
		{name: "kafka down", body: good, pubErr: errKafkaDown, wantCode: codes.Unavailable, wantRetryInfo: true, wantMsg: "brokers unreachable"},
		{
			name: "client deadline", body: good,
			pubFn: func(ctx context.Context, _ []span.TraceBatch) error { <-ctx.Done(); return ctx.Err() },
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 100*time.Millisecond)
			},
			// The client sees its own deadline, never success.
			wantCode: codes.DeadlineExceeded,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r.pub.set(c.pubErr, c.pubFn)
			defer r.pub.set(nil, nil)
			ctx, cancel := context.WithCancel(context.Background())
			if c.ctx != nil {
				ctx, cancel = c.ctx()
			}
			defer cancel()

			resp, err := exportRaw(ctx, conn, c.body, c.opts...)
			st := status.Convert(err)
			require.Equal(t, c.wantCode, st.Code(), st.Message())
			if c.wantCode != codes.OK {
				require.Contains(t, st.Message(), c.wantMsg)
			}
			var retry *errdetails.RetryInfo
			for _, d := range st.Details() {
				if ri, ok := d.(*errdetails.RetryInfo); ok {
					retry = ri
				}
			}
			if c.wantRetryInfo {
				require.NotNil(t, retry, "retryable refusal needs RetryInfo")
				require.Equal(t, cfg.RetryAfter, retry.RetryDelay.AsDuration())
			} else {
				require.Nil(t, retry)
			}
			if c.wantCode == codes.OK {
				require.Equal(t, c.wantRejected, resp.GetPartialSuccess().GetRejectedSpans())
				require.Contains(t, resp.GetPartialSuccess().GetErrorMessage(), c.wantMsg)
			}
			require.Len(t, r.pub.take(), c.wantPublished)

			// The server keeps serving after each bad request.
			r.pub.set(nil, nil)
			_, err = exportRaw(context.Background(), conn, good)
			require.NoError(t, err)
			require.Len(t, r.pub.take(), 2)
		})
	}
	require.Eventually(t, func() bool { return metricValue(r.metrics.inflight) == 0 }, 5*time.Second, 10*time.Millisecond)
	refused := func(reason string) float64 {
		return metricValue(r.metrics.spansRefused.WithLabelValues(transportGRPC, reason))
	}
	require.Equal(t, 2.0, refused(reasonInvalid))
	require.Equal(t, 4.0, refused(reasonBackpressure))
	require.Equal(t, 4.0, refused(reasonUnavailable))
	require.Equal(t, 4.0, refused(reasonCanceled))
	// malformed + truncated
	require.Equal(t, 2.0, metricValue(r.metrics.requests.WithLabelValues(signalTraces, transportGRPC, "InvalidArgument")))
}

// TestOverload fills the in-flight cap with a request stuck on "Kafka" and
// checks that further requests are refused at once with a retryable answer.
func TestOverload(t *testing.T) {
	cfg := testConfig()
	cfg.MaxInflightRequests = 1
	r := startReceiver(t, cfg)
	entered, release := make(chan struct{}), make(chan struct{})
	r.pub.set(nil, func(context.Context, []span.TraceBatch) error {
		entered <- struct{}{}
		<-release
		return nil
	})
	conn := dialGRPC(t, r.grpcAddr)
	good := marshal(t, buildRequest(1, 1))
	firstDone := make(chan error, 1)
	go func() {
		_, err := exportRaw(context.Background(), conn, good)
		firstDone <- err
	}()
	<-entered

	_, err := exportRaw(context.Background(), conn, good)
	st := status.Convert(err)
	require.Equal(t, codes.ResourceExhausted, st.Code())
	require.Len(t, st.Details(), 1)
	require.IsType(t, &errdetails.RetryInfo{}, st.Details()[0])

	resp, err := newHTTPClient(t).Post(r.httpURL+"/v1/traces", contentTypeProto, bytes.NewReader(good))
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.Equal(t, 1.0, metricValue(r.metrics.inflight))

	close(release)
	require.NoError(t, <-firstDone)
	r.pub.set(nil, nil)
	_, err = exportRaw(context.Background(), conn, good)
	require.NoError(t, err, "a freed slot is usable again")
}

// FuzzHTTPExport feeds arbitrary bodies to the HTTP handler in both
// encodings: it must never panic, never answer 5xx (the publisher succeeds),
// and always answer in the request's encoding.
func FuzzHTTPExport(f *testing.F) {
	cfg := DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr = "", ""
	cfg.MaxRequestBytes = testMaxBytes
	r, err := New(cfg, &recordingPublisher{}, nil, nil)
	require.NoError(f, err)
	h := r.HTTPHandler()

	f.Add(false, marshal(f, buildRequest(2, 3)))
	f.Add(false, marshal(f, zeroIDRequest()))
	f.Add(false, []byte{0x0a, 0x80})
	f.Add(true, []byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}`))
	f.Add(true, []byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"","spanId":""}]}]}]}`))
	f.Add(true, []byte(`[`))
	f.Fuzz(func(t *testing.T, isJSON bool, body []byte) {
		ct := contentTypeProto
		if isJSON {
			ct = contentTypeJSON
		}
		req := httptest.NewRequest(http.MethodPost, "/v1/traces", bytes.NewReader(body))
		req.Header.Set("Content-Type", ct)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Contains(t, []int{200, 400, 413}, rec.Code, rec.Body.String())
		require.Equal(t, ct, rec.Header().Get("Content-Type"))
	})
}
