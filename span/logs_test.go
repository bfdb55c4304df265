package span

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func mkLog(trace, span []byte, body string) *logspb.LogRecord {
	return &logspb.LogRecord{
		TimeUnixNano: 1_700_000_000_000_000_000, ObservedTimeUnixNano: 1_700_000_000_000_000_001,
		SeverityNumber: logspb.SeverityNumber_SEVERITY_NUMBER_INFO, SeverityText: "INFO",
		Body:       &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: body}},
		Attributes: []*commonpb.KeyValue{strAttr("logger", "app"), intAttr("line", 42)},
		TraceId:    trace, SpanId: span, Flags: 1,
	}
}

// interleavedLogs has two resources, three scopes, two traces and records
// without a trace spread over all of them.
func interleavedLogs() *logspb.LogsData {
	return &logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{
		{
			Resource:  mkResource("frontend"),
			SchemaUrl: "https://opentelemetry.io/schemas/1.26.0",
			ScopeLogs: []*logspb.ScopeLogs{
				{Scope: mkScope("slog"), SchemaUrl: "s1", LogRecords: []*logspb.LogRecord{
					mkLog(nil, nil, "startup"), mkLog(tid(1), sid(1), "a1"), mkLog(tid(2), sid(2), "b1"), mkLog(tid(1), nil, "a2"),
				}},
				{Scope: mkScope("zap"), LogRecords: []*logspb.LogRecord{
					mkLog(make([]byte, 16), make([]byte, 8), "zero ids"), mkLog(tid(1), sid(3), "a3"),
				}},
			},
		},
		{
			Resource: mkResource("backend"),
			ScopeLogs: []*logspb.ScopeLogs{
				{Scope: mkScope("log4j"), LogRecords: []*logspb.LogRecord{
					mkLog(tid(2), sid(4), "b2"), mkLog(nil, nil, "tick"),
				}},
			},
		},
	}}
}

// logRow is one log record with what it was reported under; ri numbers the
// ResourceLogs it came from.
type logRow struct {
	rec      *logspb.LogRecord
	res      *resourcepb.Resource
	resURL   string
	scope    *commonpb.InstrumentationScope
	scopeURL string
	ri       int
}

func flattenLogs(ld *logspb.LogsData) []logRow {
	var out []logRow
	for ri, rl := range ld.GetResourceLogs() {
		for _, sl := range rl.GetScopeLogs() {
			for _, lr := range sl.GetLogRecords() {
				out = append(out, logRow{lr, rl.GetResource(), rl.GetSchemaUrl(), sl.GetScope(), sl.GetSchemaUrl(), ri})
			}
		}
	}
	return out
}

// requireLogSplitMatches checks that res holds exactly the accepted records
// of want, each once, grouped by trace ID (records without one in a single
// batch), in order, with their resource and scope.
func requireLogSplitMatches(t testing.TB, want *logspb.LogsData, res LogSplitResult) {
	t.Helper()
	var order []TraceID
	byKey := map[TraceID][]logRow{}
	for _, r := range flattenLogs(want) {
		k, err := logKey(r.rec.GetTraceId(), r.rec.GetSpanId())
		if err != nil {
			continue
		}
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], r)
	}
	require.Len(t, res.Batches, len(order))
	total := 0
	for i, b := range res.Batches {
		require.Equal(t, order[i], b.ID, "batch %d", i)
		require.Equal(t, !b.ID.IsZero(), b.HasTrace, "batch %d", i)
		var ld logspb.LogsData
		require.NoError(t, proto.Unmarshal(b.Data, &ld), "batch %s", b.ID)
		got, exp := flattenLogs(&ld), byKey[b.ID]
		require.Len(t, got, b.Records)
		require.Len(t, got, len(exp))
		resources := map[int]bool{}
		for j := range exp {
			require.True(t, proto.Equal(exp[j].rec, got[j].rec), "record %d: got %v want %v", j, got[j].rec, exp[j].rec)
			require.True(t, proto.Equal(exp[j].res, got[j].res), "record %d resource", j)
			require.Equal(t, exp[j].resURL, got[j].resURL, "record %d resource schema", j)
			require.True(t, proto.Equal(exp[j].scope, got[j].scope), "record %d scope", j)
			require.Equal(t, exp[j].scopeURL, got[j].scopeURL, "record %d scope schema", j)
			resources[exp[j].ri] = true
		}
		// One ResourceLogs per resource, not one per record.
		require.Len(t, ld.GetResourceLogs(), len(resources))
		total += b.Records
	}
	require.Equal(t, total, res.Records)
}

func TestSplitLogs(t *testing.T) {
	withUnknown := interleavedLogs()
	withUnknown.ResourceLogs[0].ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), []byte("r")))
	withUnknown.ResourceLogs[0].ScopeLogs[1].ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 98, protowire.VarintType), 7))
	// Field 4 is reserved in LogRecord; a future field must survive too.
	withUnknown.ResourceLogs[1].ScopeLogs[0].LogRecords[0].ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 4, protowire.VarintType), 1))

	bad := &logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{{
		Resource: mkResource("svc"),
		ScopeLogs: []*logspb.ScopeLogs{{Scope: mkScope("s"), LogRecords: []*logspb.LogRecord{
			mkLog(tid(1), sid(1), "ok1"),
			mkLog(tid(1)[:8], sid(2), "short trace"),
			mkLog(tid(2), sid(3)[:4], "short span"),
			mkLog(nil, nil, "no ids"),
			mkLog(make([]byte, 8), nil, "8 zero bytes"),
			mkLog(tid(2), make([]byte, 8), "zero span"),
			mkLog(nil, sid(7), "span without trace"),
			mkLog(make([]byte, 20), nil, "long trace"),
		}}},
	}}}

	none := TraceID{}
	tests := []struct {
		name         string
		in           *logspb.LogsData
		wantBatches  []TraceID
		wantRecords  int
		wantRejected int
		wantReasons  []string
	}{
		{name: "empty", in: &logspb.LogsData{}},
		{name: "resource without records", in: &logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{{Resource: mkResource("x")}}}},
		{
			name: "only records without trace",
			in: &logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{{ScopeLogs: []*logspb.ScopeLogs{{LogRecords: []*logspb.LogRecord{
				mkLog(nil, nil, "x"), mkLog(make([]byte, 16), nil, "y"),
			}}}}}},
			wantBatches: []TraceID{none}, wantRecords: 2,
		},
		{name: "interleaved", in: interleavedLogs(), wantBatches: []TraceID{none, TraceID(tid(1)), TraceID(tid(2))}, wantRecords: 8},
		{name: "unknown fields kept", in: withUnknown, wantBatches: []TraceID{none, TraceID(tid(1)), TraceID(tid(2))}, wantRecords: 8},
		{
			name:         "wrong ID lengths rejected",
			in:           bad,
			wantBatches:  []TraceID{TraceID(tid(1)), none, TraceID(tid(2))},
			wantRecords:  4,
			wantRejected: 4,
			wantReasons: []string{
				"log record 1 of resource 0: trace ID of 8 bytes, want 16 or none: wrong ID length",
				"log record 2 of resource 0: span ID of 4 bytes, want 8 or none: wrong ID length",
				"log record 4 of resource 0: trace ID of 8 bytes",
				"and 1 more",
			},
		},
	}
	var s LogSplitter // reused across cases on purpose
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := marshal(t, tc.in)
			res, err := s.Split(req)
			require.NoError(t, err)
			ids := []TraceID{}
			for _, b := range res.Batches {
				ids = append(ids, b.ID)
			}
			require.Equal(t, append([]TraceID{}, tc.wantBatches...), ids)
			require.Equal(t, tc.wantRecords, res.Records)
			require.Equal(t, tc.wantRejected, res.Rejected)
			for _, r := range tc.wantReasons {
				require.Contains(t, res.RejectReason, r)
			}
			if tc.wantRejected == 0 {
				require.Empty(t, res.RejectReason)
			}
			require.Zero(t, res.Repaired)
			requireLogSplitMatches(t, tc.in, res)

			// SplitLogs gives the same result, and the request form
			// (ExportLogsServiceRequest) is the same bytes.
			res2, err := SplitLogs(req)
			require.NoError(t, err)
			require.Equal(t, res, res2)
			require.Equal(t, req, marshal(t, &collogspb.ExportLogsServiceRequest{ResourceLogs: tc.in.ResourceLogs}))
		})
	}
}

// TestSplitLogsThenTraces checks that one Splitter's scratch space, shared
// by both signals through LogSplitter, does not leak state between them.
func TestSplitLogsThenTraces(t *testing.T) {
	var l LogSplitter
	_, err := l.Split(marshal(t, interleavedLogs()))
	require.NoError(t, err)
	res, err := l.s.Split(marshal(t, interleaved()))
	require.NoError(t, err)
	requireSplitMatches(t, interleaved(), res)
	lres, err := l.Split(marshal(t, interleavedLogs()))
	require.NoError(t, err)
	requireLogSplitMatches(t, interleavedLogs(), lres)
}

func TestSplitLogsOutputIndependent(t *testing.T) {
	req := marshal(t, interleavedLogs())
	res, err := SplitLogs(req)
	require.NoError(t, err)
	want := make([][]byte, len(res.Batches))
	for i, b := range res.Batches {
		want[i] = bytes.Clone(b.Data)
	}
	for i := range req {
		req[i] = 0xAA
	}
	_ = append(res.Batches[0].Data, 1, 2, 3) // must not clobber batch 1
	for i, b := range res.Batches {
		require.Equal(t, want[i], b.Data)
	}
}

func TestSplitLogsMalformed(t *testing.T) {
	good := marshal(t, interleavedLogs())
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	wrapRecord := func(rec []byte) []byte {
		sl := protowire.AppendBytes(tag(2, protowire.BytesType), rec)
		rl := protowire.AppendBytes(tag(2, protowire.BytesType), sl)
		return protowire.AppendBytes(tag(1, protowire.BytesType), rl)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"truncated", good[:len(good)-3], "resource_logs"},
		{"resource_logs as varint", protowire.AppendVarint(tag(1, protowire.VarintType), 1), "LogsData.resource_logs: wire type 0, want 2"},
		{"scope_logs as fixed64", protowire.AppendBytes(tag(1, protowire.BytesType), protowire.AppendFixed64(tag(2, protowire.Fixed64Type), 1)), "ResourceLogs.scope_logs: wire type"},
		{"trace_id as varint", wrapRecord(protowire.AppendVarint(tag(9, protowire.VarintType), 5)), "LogRecord.trace_id: wire type"},
		{"time as varint", wrapRecord(protowire.AppendVarint(tag(1, protowire.VarintType), 5)), "LogRecord.time_unix_nano: wire type"},
		{"body as fixed32", wrapRecord(protowire.AppendFixed32(tag(5, protowire.Fixed32Type), 1)), "LogRecord.body: wire type"},
		{"body value as varint", wrapRecord(protowire.AppendBytes(tag(5, protowire.BytesType), protowire.AppendVarint(tag(1, protowire.VarintType), 1))), "AnyValue.string_value: wire type"},
		{"truncated record", wrapRecord([]byte{0x4a, 0x10, 1, 2}), "log record 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := SplitLogs(tc.in)
			require.ErrorIs(t, err, ErrMalformed)
			require.ErrorContains(t, err, tc.want)
			_, _, err = RepairUTF8LogsData(tc.in)
			require.ErrorIs(t, err, ErrMalformed)
		})
	}
}

func withInvalidUTF8Logs(t testing.TB, ld *logspb.LogsData) []byte {
	t.Helper()
	b := marshal(t, ld)
	require.True(t, bytes.Contains(b, []byte(marker)))
	return bytes.ReplaceAll(b, []byte(marker), []byte("\xffBA\xc3\x28"))
}

func TestSplitLogsRepairsUTF8(t *testing.T) {
	sv := func(s string) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
	}
	rec := func(ld *logspb.LogsData, i int) *logspb.LogRecord {
		return ld.ResourceLogs[0].ScopeLogs[0].LogRecords[i]
	}
	tests := []struct {
		name         string
		mutate       func(ld *logspb.LogsData)
		wantRepaired int
	}{
		{"severity_text", func(ld *logspb.LogsData) { rec(ld, 0).SeverityText = marker }, 1},
		{"event_name", func(ld *logspb.LogsData) { rec(ld, 1).EventName = marker }, 1},
		{"body string", func(ld *logspb.LogsData) { rec(ld, 0).Body = sv(marker) }, 1},
		{"body kvlist", func(ld *logspb.LogsData) {
			rec(ld, 1).Body = &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{
				Values: []*commonpb.KeyValue{{Key: "msg", Value: sv(marker)}},
			}}}
		}, 1},
		{"attribute key", func(ld *logspb.LogsData) { rec(ld, 0).Attributes[0].Key = marker }, 1},
		{"attribute value", func(ld *logspb.LogsData) { rec(ld, 1).Attributes = append(rec(ld, 1).Attributes, strAttr("k", marker)) }, 1},
		{"resource attribute", func(ld *logspb.LogsData) {
			ld.ResourceLogs[0].Resource.Attributes = append(ld.ResourceLogs[0].Resource.Attributes, strAttr("host", marker))
		}, 2},
		{"resource schema url", func(ld *logspb.LogsData) { ld.ResourceLogs[0].SchemaUrl = marker }, 2},
		{"scope name", func(ld *logspb.LogsData) { ld.ResourceLogs[0].ScopeLogs[0].Scope.Name = marker }, 2},
		{"scope schema url", func(ld *logspb.LogsData) { ld.ResourceLogs[0].ScopeLogs[0].SchemaUrl = marker }, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ld := &logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{{
				Resource: mkResource("svc"),
				ScopeLogs: []*logspb.ScopeLogs{{Scope: mkScope("s"), LogRecords: []*logspb.LogRecord{
					mkLog(tid(1), sid(1), "a"), mkLog(tid(1), sid(2), "b"),
				}}},
			}}}
			tc.mutate(ld)
			req := withInvalidUTF8Logs(t, ld)
			require.Error(t, proto.Unmarshal(req, &logspb.LogsData{}), "the input must really be invalid")

			res, err := SplitLogs(req)
			require.NoError(t, err)
			require.Equal(t, tc.wantRepaired, res.Repaired)
			require.Equal(t, 2, res.Records)
			require.Len(t, res.Batches, 1)
			require.True(t, bytes.Contains(res.Batches[0].Data, []byte("\uFFFDBA\uFFFD(")))

			fixed, n, err := RepairUTF8LogsData(req)
			require.NoError(t, err)
			require.Positive(t, n)
			var want logspb.LogsData
			require.NoError(t, proto.Unmarshal(fixed, &want))
			requireLogSplitMatches(t, &want, res)

			// DecodeLogs reads the unrepaired bytes.
			got, err := DecodeLogs(req)
			require.NoError(t, err)
			require.True(t, proto.Equal(&want, got))
		})
	}
}

func TestDecodeLogs(t *testing.T) {
	in := interleavedLogs()
	ld, err := DecodeLogs(marshal(t, in))
	require.NoError(t, err)
	require.True(t, proto.Equal(in, ld))

	_, err = DecodeLogs([]byte{0x0a, 0x05, 0x01})
	require.ErrorContains(t, err, "decode logs")

	out, n, err := RepairUTF8LogsData(marshal(t, in))
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, marshal(t, in), out)
}

func TestLogsJSONToProto(t *testing.T) {
	const body = `{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
	  "scopeLogs":[{"scope":{"name":"slog"},"logRecords":[
	    {"timeUnixNano":"1544712660000000000","severityNumber":9,"severityText":"INFO","body":{"stringValue":"in span"},
	     "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","flags":1},
	    {"timeUnixNano":1544712661000000000,"severityNumber":"SEVERITY_NUMBER_WARN","body":{"stringValue":"no span"},"eventName":"e",
	     "unknownFieldIsIgnored":true},
	    {"body":{"stringValue":"zero"},"traceId":"00000000000000000000000000000000","spanId":""}
	  ]}]}]}`
	pb, err := LogsJSONToProto([]byte(body))
	require.NoError(t, err)
	var req collogspb.ExportLogsServiceRequest
	require.NoError(t, proto.Unmarshal(pb, &req))
	recs := req.ResourceLogs[0].ScopeLogs[0].LogRecords
	require.Len(t, recs, 3)
	require.Equal(t, "5b8efff798038103d269b633813fc60c", hex.EncodeToString(recs[0].TraceId))
	require.Equal(t, "eee19b7ec3c1b174", hex.EncodeToString(recs[0].SpanId))
	require.Equal(t, logspb.SeverityNumber_SEVERITY_NUMBER_WARN, recs[1].SeverityNumber)
	require.Empty(t, recs[1].TraceId)
	require.Equal(t, make([]byte, 16), recs[2].TraceId)

	res, err := SplitLogs(pb)
	require.NoError(t, err)
	require.Len(t, res.Batches, 2)
	require.True(t, res.Batches[0].HasTrace)
	require.Equal(t, "5b8efff798038103d269b633813fc60c", res.Batches[0].ID.String())
	require.False(t, res.Batches[1].HasTrace)
	require.Equal(t, 2, res.Batches[1].Records)
}

func TestLogsJSONToProtoErrors(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{"not json", `{`, "decode OTLP/JSON logs"},
		{"short trace id", `{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"5b8efff7"}]}]}]}`, "traceId: not 32 hex digits"},
		{"non-hex span id", `{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":"zzzzzzzzzzzzzzzz"}]}]}]}`, "spanId: not 16 hex digits"},
		{"body wrong type", `{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":"text"}]}]}]}`, "decode OTLP/JSON logs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LogsJSONToProto([]byte(tc.body))
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func FuzzSplitLogs(f *testing.F) {
	f.Add(marshal(f, interleavedLogs()))
	f.Add(marshal(f, &logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{{ScopeLogs: []*logspb.ScopeLogs{{
		LogRecords: []*logspb.LogRecord{mkLog(tid(1)[:8], sid(1), "short"), mkLog(tid(1), sid(1)[:3], "short span"), mkLog(nil, nil, "none")},
	}}}}}))
	ld := interleavedLogs()
	ld.ResourceLogs[0].ScopeLogs[0].LogRecords[0].SeverityText = marker
	ld.ResourceLogs[1].ScopeLogs[0].LogRecords[1].Body = &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{
		Values: []*commonpb.AnyValue{{Value: &commonpb.AnyValue_StringValue{StringValue: marker}}},
	}}}
	ld.ResourceLogs[1].Resource.Attributes[0].Key = marker
	f.Add(withInvalidUTF8Logs(f, ld))
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00})
	f.Add([]byte{0x0a, 0x04, 0x12, 0x02, 0x12, 0x00})
	f.Add([]byte{0x0b, 0x0c})

	f.Fuzz(func(t *testing.T, req []byte) {
		res, err := SplitLogs(req)
		_, _, rerr := RepairUTF8LogsData(req)
		require.Equal(t, err != nil, rerr != nil, "split error %v, repair error %v", err, rerr)

		var in logspb.LogsData
		uerr := proto.Unmarshal(req, &in)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			if uerr == nil {
				require.True(t, misplacedKnownField(in.ProtoReflect()), "split rejected what proto accepts: %v", err)
			}
			return
		}
		if uerr != nil {
			// Only invalid UTF-8 may make proto fail where the split succeeds.
			fixed, n, err := RepairUTF8LogsData(req)
			require.NoError(t, err)
			require.Positive(t, n, "proto failed (%v) but nothing to repair", uerr)
			require.NoError(t, proto.Unmarshal(fixed, &in))
			_, err = DecodeLogs(req)
			require.NoError(t, err)
		} else {
			require.Zero(t, res.Repaired)
		}
		require.Equal(t, len(flattenLogs(&in)), res.Records+res.Rejected)
		noTrace := 0
		for _, b := range res.Batches {
			if !b.HasTrace {
				noTrace++
			}
		}
		require.LessOrEqual(t, noTrace, 1, "one batch for all records without a trace")
		requireLogSplitMatches(t, &in, res)
	})
}

func FuzzLogsJSONToProto(f *testing.F) {
	f.Add(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","body":{"stringValue":"hi"}}]}]}]}`)
	f.Add(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"","body":{"kvlistValue":{"values":[{"key":"a","value":{"intValue":"3"}}]}}}]}]}]}`)
	f.Add(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"5b8e"}]}]}]}`)
	f.Add(`{}`)
	f.Add(`[`)
	f.Fuzz(func(t *testing.T, body string) {
		pb, err := LogsJSONToProto([]byte(body))
		if err != nil {
			return
		}
		// Whatever the JSON decoder accepts is valid protobuf with IDs of a
		// valid length or none, so it splits without error or rejection.
		var req collogspb.ExportLogsServiceRequest
		require.NoError(t, proto.Unmarshal(pb, &req))
		res, err := SplitLogs(pb)
		require.NoError(t, err)
		require.Zero(t, res.Rejected)
		require.Equal(t, len(flattenLogs(&logspb.LogsData{ResourceLogs: req.ResourceLogs})), res.Records)
	})
}

// benchLogsRequest is a realistic logs export: 3 resources with 2 scopes
// each, 512 records, 5 records per trace and one in ten without a trace,
// 6 attributes per record and a sentence of body.
func benchLogsRequest(tb testing.TB) (*logspb.LogsData, []byte) {
	const nRecs, perTrace, nRes, nScopes = 512, 5, 3, 2
	ld := &logspb.LogsData{}
	for r := range nRes {
		rl := &logspb.ResourceLogs{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
				strAttr("service.name", fmt.Sprintf("service-%d", r)),
				strAttr("service.version", "1.42.0"),
				strAttr("host.name", fmt.Sprintf("ip-10-0-0-%d.ec2.internal", r)),
				strAttr("k8s.pod.name", fmt.Sprintf("service-%d-7f9c6d5b4-x2x9z", r)),
				strAttr("telemetry.sdk.language", "go"),
			}},
			SchemaUrl: "https://opentelemetry.io/schemas/1.26.0",
		}
		for s := range nScopes {
			rl.ScopeLogs = append(rl.ScopeLogs, &logspb.ScopeLogs{Scope: mkScope(fmt.Sprintf("go.opentelemetry.io/contrib/bridges/otelslog/%d", s))})
		}
		ld.ResourceLogs = append(ld.ResourceLogs, rl)
	}
	for i := range nRecs {
		rec := &logspb.LogRecord{
			TimeUnixNano: 1_700_000_000_000_000_000 + uint64(i)*1000, ObservedTimeUnixNano: 1_700_000_000_000_000_500 + uint64(i)*1000,
			SeverityNumber: logspb.SeverityNumber_SEVERITY_NUMBER_INFO, SeverityText: "INFO",
			Body: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: fmt.Sprintf("order %d shipped to warehouse eu-west-1 after 3 retries", i)}},
			Attributes: []*commonpb.KeyValue{
				strAttr("code.function", "github.com/acme/orders.(*Service).Ship"),
				strAttr("code.filepath", "/src/orders/service.go"),
				intAttr("code.lineno", 214),
				strAttr("order.id", fmt.Sprintf("ord-%08d", i)),
				intAttr("retries", 3),
				strAttr("warehouse", "eu-west-1"),
			},
		}
		if i%10 != 9 {
			var trace [16]byte
			binary.BigEndian.PutUint64(trace[:8], 0x5b8efff798038103)
			binary.BigEndian.PutUint64(trace[8:], uint64(i/perTrace+1))
			var id [8]byte
			binary.BigEndian.PutUint64(id[:], uint64(i+1))
			rec.TraceId, rec.SpanId, rec.Flags = trace[:], id[:], 1
		}
		rl := ld.ResourceLogs[i%nRes]
		sl := rl.ScopeLogs[(i/nRes)%nScopes]
		sl.LogRecords = append(sl.LogRecords, rec)
	}
	return ld, marshal(tb, ld)
}

func TestBenchLogsRequestSplits(t *testing.T) {
	ld, req := benchLogsRequest(t)
	res, err := SplitLogs(req)
	require.NoError(t, err)
	require.Equal(t, 512, res.Records)
	require.Len(t, res.Batches, 103+1)
	requireLogSplitMatches(t, ld, res)
}

func BenchmarkSplitLogs(b *testing.B) {
	_, req := benchLogsRequest(b)
	var s LogSplitter
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	records := 0
	cpu0, _ := processCPU()
	for b.Loop() {
		res, err := s.Split(req)
		if err != nil || res.Records != 512 {
			b.Fatalf("split: %v, %d records", err, res.Records)
		}
		records += res.Records
	}
	reportRecords(b, records, cpu0)
}

// BenchmarkSplitLogsBaseline is the straightforward split: decode to structs,
// group by trace ID, re-encode each group.
func BenchmarkSplitLogsBaseline(b *testing.B) {
	_, req := benchLogsRequest(b)
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	records := 0
	cpu0, _ := processCPU()
	for b.Loop() {
		var ld logspb.LogsData
		if err := proto.Unmarshal(req, &ld); err != nil {
			b.Fatal(err)
		}
		type key struct {
			id    TraceID
			ri, s int
		}
		var order []TraceID
		groups := map[TraceID]*logspb.LogsData{}
		last := map[TraceID]key{}
		for ri, rl := range ld.ResourceLogs {
			for si, sl := range rl.ScopeLogs {
				for _, lr := range sl.LogRecords {
					id, err := logKey(lr.TraceId, lr.SpanId)
					if err != nil {
						continue
					}
					g, ok := groups[id]
					if !ok {
						g = &logspb.LogsData{}
						groups[id] = g
						order = append(order, id)
						last[id] = key{id, -1, -1}
					}
					k := last[id]
					if k.ri != ri {
						g.ResourceLogs = append(g.ResourceLogs, &logspb.ResourceLogs{Resource: rl.Resource, SchemaUrl: rl.SchemaUrl})
					}
					out := g.ResourceLogs[len(g.ResourceLogs)-1]
					if k.ri != ri || k.s != si {
						out.ScopeLogs = append(out.ScopeLogs, &logspb.ScopeLogs{Scope: sl.Scope, SchemaUrl: sl.SchemaUrl})
					}
					osl := out.ScopeLogs[len(out.ScopeLogs)-1]
					osl.LogRecords = append(osl.LogRecords, lr)
					last[id] = key{id, ri, si}
					records++
				}
			}
		}
		for _, id := range order {
			if _, err := proto.Marshal(groups[id]); err != nil {
				b.Fatal(err)
			}
		}
	}
	reportRecords(b, records, cpu0)
}

func reportRecords(b *testing.B, records int, cpu0 int64) {
	sec := b.Elapsed().Seconds()
	if sec <= 0 || records == 0 {
		return
	}
	b.ReportMetric(float64(records)/sec, "records/s")
	b.ReportMetric(sec*1e9/float64(records), "ns/record")
	if cpu1, ok := processCPU(); ok {
		b.ReportMetric(float64(cpu1-cpu0)/float64(records), "cpu-ns/record")
	}
}
