package span

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// otlpJSON is shaped like the OTLP/JSON example in the specification, with the
// quirks receivers must accept: upper-case hex, integer enums, int64 as both
// string and number, and unknown fields at several levels.
const otlpJSON = `{
  "resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
    "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
    "futureResourceSpansField": [1, 2],
    "scopeSpans": [{
      "scope": {"name": "io.opentelemetry.http", "version": "1.2"},
      "spans": [{
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "eee19b7ec3c1b174",
        "parentSpanId": "eee19b7ec3c1b173",
        "traceState": "vendor=1",
        "name": "GET /cart",
        "kind": 2,
        "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": 1544712661000000000,
        "attributes": [
          {"key": "http.status_code", "value": {"intValue": "503"}},
          {"key": "retry", "value": {"boolValue": true}},
          {"key": "blob", "value": {"bytesValue": "AAEC"}}
        ],
        "events": [{"timeUnixNano": "1544712660500000000", "name": "exception",
                    "attributes": [{"key": "exception.message", "value": {"stringValue": "boom"}}]}],
        "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "unknownLinkField": "x"}],
        "status": {"code": 2, "message": "upstream down"},
        "flags": 257,
        "someFutureField": {"nested": true}
      }, {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b173",
        "name": "root",
        "kind": "SPAN_KIND_SERVER"
      }]
    }]
  }]
}`

func TestTracesJSONToProto(t *testing.T) {
	b, err := TracesJSONToProto([]byte(otlpJSON))
	require.NoError(t, err)
	var td tracepb.TracesData
	require.NoError(t, proto.Unmarshal(b, &td))
	spans := FromTracesData(&td)
	require.Len(t, spans, 2)
	s := spans[0]
	require.Equal(t, "5b8efff798038103d269b633813fc60c", hex.EncodeToString(s.TraceId))
	require.Equal(t, "eee19b7ec3c1b174", hex.EncodeToString(s.SpanId))
	require.Equal(t, "eee19b7ec3c1b173", hex.EncodeToString(s.ParentSpanId))
	require.Equal(t, tracepb.Span_SPAN_KIND_SERVER, s.Kind)
	require.Equal(t, uint64(1544712660000000000), s.StartTimeUnixNano)
	require.Equal(t, uint64(1544712661000000000), s.EndTimeUnixNano)
	require.Equal(t, int64(503), s.Attributes[0].Value.GetIntValue())
	require.Equal(t, []byte{0, 1, 2}, s.Attributes[2].Value.GetBytesValue(), "bytes values stay base64")
	require.Equal(t, "exception", s.Events[0].Name)
	require.Equal(t, "0af7651916cd43dd8448eb211c80319c", hex.EncodeToString(s.Links[0].TraceId))
	require.Equal(t, "b7ad6b7169203331", hex.EncodeToString(s.Links[0].SpanId))
	require.Equal(t, tracepb.Status_STATUS_CODE_ERROR, s.Status.Code)
	require.Equal(t, uint32(257), s.Flags)
	require.Equal(t, "checkout", s.ServiceName())
	require.Equal(t, "io.opentelemetry.http", s.Scope.Scope.Name)
	require.Empty(t, spans[1].ParentSpanId)
	require.Equal(t, s.TraceId, spans[1].TraceId)

	// Enum names from a newer schema are ignored like unknown fields.
	b2, err := TracesJSONToProto([]byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x","kind":"SPAN_KIND_FUTURE"}]}]}]}`))
	require.NoError(t, err)
	var td2 tracepb.TracesData
	require.NoError(t, proto.Unmarshal(b2, &td2))
	require.Equal(t, "x", FromTracesData(&td2)[0].Name)

	// The result feeds the splitter directly.
	res, err := SplitTraces(b)
	require.NoError(t, err)
	require.Equal(t, 2, res.Spans)
	require.Len(t, res.Batches, 1)
}

func TestTracesJSONToProtoErrors(t *testing.T) {
	span := func(fields string) string {
		return `{"resourceSpans":[{"scopeSpans":[{"spans":[{` + fields + `}]}]}]}`
	}
	const okTrace = `"traceId":"5b8efff798038103d269b633813fc60c"`
	tests := []struct {
		name, body, want string
	}{
		{"not JSON", `{"resourceSpans":`, "decode OTLP/JSON traces"},
		{"trace ID not hex", span(`"traceId":"zz8efff798038103d269b633813fc60c"`), "traceId: not 32 hex digits"},
		{"trace ID too short", span(`"traceId":"5b8efff798038103d269b633813f"`), "traceId: not 32 hex digits"},
		{"trace ID as base64", span(`"traceId":"W47/95gDgQPSabYzgT/GDA=="`), "traceId: not 32 hex digits"},
		{"trace ID of 64 bits", span(`"traceId":"d269b633813fc60c"`), "traceId: not 32 hex digits"},
		{"span ID too long", span(okTrace + `,"spanId":"5b8efff798038103d269b633813fc60c"`), "spanId: not 16 hex digits"},
		{"span ID not hex", span(okTrace + `,"spanId":"eee19b7ec3c1b17g"`), "spanId: not 16 hex digits"},
		{"parent span ID", span(okTrace + `,"parentSpanId":"eee19b7ec3c1"`), "parentSpanId: not 16 hex digits"},
		{"link span ID", span(okTrace + `,"links":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"abc"}]`), "links[0]: spanId"},
		{"bad number", span(`"droppedAttributesCount":"many"`), "decode OTLP/JSON traces"},
		{"invalid base64 length", span(`"traceId":"abcde"`), "decode OTLP/JSON traces"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := TracesJSONToProto([]byte(tc.body))
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestFixJSONIDsLogsAndExemplars(t *testing.T) {
	const logsJSON = `{"resourceLogs":[{"scopeLogs":[{"logRecords":[{
		"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","body":{"stringValue":"hi"}}]}]}]}`
	var ld logspb.LogsData
	require.NoError(t, protojson.Unmarshal([]byte(logsJSON), &ld))
	require.NoError(t, FixJSONIDs(&ld))
	lr := ld.ResourceLogs[0].ScopeLogs[0].LogRecords[0]
	require.Equal(t, "5b8efff798038103d269b633813fc60c", hex.EncodeToString(lr.TraceId))
	require.Equal(t, "eee19b7ec3c1b174", hex.EncodeToString(lr.SpanId))

	const metricsJSON = `{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"latency","histogram":{"dataPoints":[{
		"count":"1","exemplars":[{"asDouble":1.5,"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}}]}]}]}`
	var md metricspb.MetricsData
	require.NoError(t, protojson.Unmarshal([]byte(metricsJSON), &md))
	require.NoError(t, FixJSONIDs(&md))
	ex := md.ResourceMetrics[0].ScopeMetrics[0].Metrics[0].GetHistogram().DataPoints[0].Exemplars[0]
	require.Equal(t, "5b8efff798038103d269b633813fc60c", hex.EncodeToString(ex.TraceId))
	require.Equal(t, "eee19b7ec3c1b174", hex.EncodeToString(ex.SpanId))

	bad := strings.Replace(metricsJSON, `"spanId":"eee19b7ec3c1b174"`, `"spanId":"eee19b7e"`, 1)
	md.Reset()
	require.NoError(t, protojson.Unmarshal([]byte(bad), &md))
	require.ErrorContains(t, FixJSONIDs(&md), "exemplars[0]: spanId: not 16 hex digits")
}

func TestTracesToJSONRoundTrip(t *testing.T) {
	td := interleaved()
	sp(td, 0).ParentSpanId = sid(0xab)
	sp(td, 0).Links = []*tracepb.Span_Link{{TraceId: tid(0xcd), SpanId: sid(0xef)}}
	sp(td, 0).Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR}
	orig := proto.Clone(td)

	js, err := TracesToJSON(td)
	require.NoError(t, err)
	require.True(t, proto.Equal(orig, td), "TracesToJSON must not modify its input")
	s := string(js)
	require.Contains(t, s, `"01010101010101010101010101010101"`)
	require.Contains(t, s, `"abababababababab"`)
	require.Contains(t, s, `"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"`)
	require.Contains(t, strings.ReplaceAll(s, " ", ""), `"kind":2`)
	require.Contains(t, s, `"traceId"`)
	require.NotContains(t, s, "trace_id")

	b, err := TracesJSONToProto(js)
	require.NoError(t, err)
	var back tracepb.TracesData
	require.NoError(t, proto.Unmarshal(b, &back))
	require.True(t, proto.Equal(td, &back))

	sp(td, 0).ParentSpanId = []byte{1, 2, 3}
	_, err = TracesToJSON(td)
	require.ErrorContains(t, err, "parentSpanId: ID of 3 bytes")
}

func FuzzTracesJSONToProto(f *testing.F) {
	f.Add([]byte(otlpJSON))
	f.Add([]byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"00000000000000000000000000000001","spanId":"0000000000000001"}]}]}]}`))
	f.Add([]byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"W47/95gDgQPSabYzgT/GDA=="}]}]}]}`))
	f.Add([]byte(`{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":{"kvlistValue":{"values":[{"key":"a","value":{"arrayValue":{"values":[{"intValue":1}]}}}]}}}]}}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := TracesJSONToProto(body)
		if err != nil {
			return
		}
		var td tracepb.TracesData
		require.NoError(t, proto.Unmarshal(b, &td))
		js, err := TracesToJSON(&td)
		require.NoError(t, err, "every ID that came in as hex goes back out")
		b2, err := TracesJSONToProto(js)
		require.NoError(t, err)
		var back tracepb.TracesData
		require.NoError(t, proto.Unmarshal(b2, &back))
		require.True(t, proto.Equal(&td, &back))
		_, err = SplitTraces(b)
		require.NoError(t, err, "protobuf from JSON is well-formed")
	})
}
