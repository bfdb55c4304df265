package query

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/readapi"
	"github.com/threadline/threadline/span"
)

// shard is what one indexer holds.
type shard struct {
	spans   []span.Span
	reasons map[span.TraceID][]string
}

// startReaders serves each shard from a real Badger store through the real
// read API (readapi), each on its own gRPC server on 127.0.0.1:0, and returns
// clients for them.
func startReaders(t *testing.T, shards ...shard) []readerpb.ReaderClient {
	t.Helper()
	return startReadersTB(t, shards...)
}

func startReadersTB(t testing.TB, shards ...shard) []readerpb.ReaderClient {
	t.Helper()
	var clients []readerpb.ReaderClient
	for _, sh := range shards {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := grpc.NewServer()
		readerpb.RegisterReaderServer(srv, readapi.New(openShardStore(t, sh), nil))
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(lis) }()
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = conn.Close()
			srv.Stop()
			<-done
		})
		clients = append(clients, readerpb.NewReaderClient(conn))
	}
	return clients
}

// deadReader returns a client for an address nothing listens on.
func deadReader(t *testing.T) readerpb.ReaderClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return readerpb.NewReaderClient(conn)
}

// Fixture builders.

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func newResource(service string, extra ...*commonpb.KeyValue) *span.Resource {
	return &span.Resource{Resource: &resourcepb.Resource{Attributes: append([]*commonpb.KeyValue{strAttr("service.name", service)}, extra...)}}
}

func newScope(name, version string) *span.Scope {
	return &span.Scope{Scope: &commonpb.InstrumentationScope{Name: name, Version: version}}
}
