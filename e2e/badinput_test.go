package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestBadInput sends what a broken or hostile client sends and checks each
// gets the right status and a message that says what is wrong, and that the
// server keeps accepting good data afterwards.
func TestBadInput(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Collector.Receiver.MaxRequestBytes = 1 << 20
	a := startAllInOne(t, cfg)
	url := "http://" + a.otlpHTTP + "/v1/traces"

	zeroReq, _ := makeRequest(1, 2)
	zeroReq.ResourceSpans[0].ScopeSpans[0].Spans[0].TraceId = make([]byte, 16)
	zeroPB, _ := proto.Marshal(zeroReq)
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	_, _ = zw.Write(bytes.Repeat([]byte{0}, 8<<20))
	_ = zw.Close()

	for _, tc := range []struct {
		name, contentType string
		body              []byte
		hdr               map[string]string
		code              int
		msg               string
	}{
		{"malformed protobuf", "application/x-protobuf", []byte{0x0a, 0xff, 0xff, 0x01}, nil, 400, ""},
		{"malformed json", "application/json", []byte(`{"resourceSpans": [`), nil, 400, ""},
		{"wrong content type", "text/plain", []byte("hello"), nil, 415, ""},
		{"oversize", "application/x-protobuf", make([]byte, 2<<20), nil, 413, ""},
		{"gzip bomb", "application/x-protobuf", bomb.Bytes(), map[string]string{"Content-Encoding": "gzip"}, 413, ""},
		{"zero trace id", "application/x-protobuf", zeroPB, nil, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := postBody(t, url, tc.contentType, tc.body, tc.hdr)
			require.Equal(t, tc.code, code, string(body))
			if tc.code == 200 {
				resp := &collectortracepb.ExportTraceServiceResponse{}
				require.NoError(t, proto.Unmarshal(body, resp))
				require.EqualValues(t, 1, resp.GetPartialSuccess().GetRejectedSpans())
				require.Contains(t, strings.ToLower(resp.GetPartialSuccess().GetErrorMessage()), "zero")
			} else {
				require.NotEmpty(t, body, "error responses carry a message")
			}
		})
	}

	conn, err := grpc.NewClient(a.otlpGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := collectortracepb.NewTraceServiceClient(conn)
	badID, _ := makeRequest(1, 1)
	badID.ResourceSpans[0].ScopeSpans[0].Spans[0].SpanId = []byte{1, 2, 3}
	resp, err := client.Export(context.Background(), badID)
	require.NoError(t, err)
	require.EqualValues(t, 1, resp.GetPartialSuccess().GetRejectedSpans())
	require.Contains(t, resp.GetPartialSuccess().GetErrorMessage(), "span ID")
	err = conn.Invoke(context.Background(), "/opentelemetry.proto.collector.trace.v1.TraceService/Export", &rawMsg{b: []byte{0x0a, 0x05, 0x01}}, &collectortracepb.ExportTraceServiceResponse{}, grpc.ForceCodecV2(rawCodecForTest{}))
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	// Query parameters.
	for _, u := range []string{
		"/api/v2/traces/not-hex", "/api/v2/traces/00000000000000000000000000000000",
		"/api/search?limit=-1", "/api/search?start=yesterday", "/api/search?minDuration=fast",
		"/api/search?start=200&end=100", "/api/search?q=%7Bnot%20traceql",
	} {
		code, _, body := get(t, a.query+u)
		require.Equal(t, 400, code, "%s: %s", u, body)
		require.NotEmpty(t, body)
	}

	// Still serving: a good request goes all the way through.
	good, ids := makeRequest(2, 3)
	_, err = client.Export(context.Background(), good)
	require.NoError(t, err)
	for _, id := range ids {
		waitTrace(t, a.query, hexID(id), 3)
	}
}
