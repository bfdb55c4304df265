package e2e

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// TestMetricToTraces: a histogram recorded inside spans carries exemplars
// (the SDK's trace-based filter); through the pipeline, the metric → traces API
// lists those traces, errors first.
func TestMetricToTraces(t *testing.T) {
	a := startAllInOne(t, testConfig(t.TempDir()))
	ctx := context.Background()
	res := resource.NewWithAttributes("", attribute.String("service.name", "payment"))
	texp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(a.otlpGRPC), otlptracegrpc.WithInsecure())
	require.NoError(t, err)
	tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSyncer(texp))
	mexp, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(a.otlpGRPC), otlpmetricgrpc.WithInsecure())
	require.NoError(t, err)
	reader := sdkmetric.NewPeriodicReader(mexp, sdkmetric.WithInterval(time.Hour)) // flushed by Shutdown
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(reader))
	hist, err := mp.Meter("e2e").Float64Histogram("payment.duration", metric.WithUnit("ms"))
	require.NoError(t, err)

	tr := tp.Tracer("e2e")
	ids := map[string]bool{}
	var failed string
	for i := range 3 {
		sctx, sp := tr.Start(ctx, "POST /payments")
		hist.Record(sctx, float64(100*(i+1)), metric.WithAttributes(attribute.String("route", "/payments")))
		if i == 0 {
			sp.SetStatus(codes.Error, "declined")
			failed = sp.SpanContext().TraceID().String()
		}
		sp.End()
		ids[sp.SpanContext().TraceID().String()] = true
	}
	require.NoError(t, tp.Shutdown(ctx))
	require.NoError(t, mp.Shutdown(ctx))

	q := url.Values{"metric": {"payment.duration"}, "match": {`service.name="payment"`},
		"start": {itoa(time.Now().Add(-time.Hour).Unix())}, "end": {itoa(time.Now().Add(time.Minute).Unix())}, "limit": {"10"}}
	var got struct {
		Traces []struct {
			TraceID string `json:"traceID"`
			Error   bool   `json:"error"`
			Found   *bool  `json:"found"`
		} `json:"traces"`
	}
	require.Eventually(t, func() bool {
		got.Traces = nil
		if getJSON(t, a.query+"/api/v1/metrics/traces?"+q.Encode(), &got) != 200 || len(got.Traces) == 0 {
			return false
		}
		for _, tr := range got.Traces {
			if tr.Found != nil && !*tr.Found {
				return false // linked, not yet stored
			}
		}
		return true
	}, 30*time.Second, 200*time.Millisecond, "exemplar traces never listed")
	require.Equal(t, failed, got.Traces[0].TraceID, "errors first")
	require.True(t, got.Traces[0].Error)
	for _, tr := range got.Traces {
		require.True(t, ids[tr.TraceID], "trace %s is one of the recorded spans'", tr.TraceID)
	}
}
