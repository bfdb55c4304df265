package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/threadline/threadline/alerting"
	"github.com/threadline/threadline/health"
	logspb "github.com/threadline/threadline/proto/logs/v1"
	metricspb "github.com/threadline/threadline/proto/metrics/v1"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/query"
	"github.com/threadline/threadline/ui"
)

// QueryConfig configures the query role.
type QueryConfig struct {
	// HTTPAddr serves the APIs and the UI. Default "127.0.0.1:16686".
	HTTPAddr string
	// Indexers are the indexers' read API addresses. Default "127.0.0.1:9095".
	Indexers []string
	Query    query.Config
	UI       ui.Config
	Alerts   alerting.Config
}

// DefaultQueryConfig returns the packages' defaults.
func DefaultQueryConfig() QueryConfig {
	return QueryConfig{HTTPAddr: "127.0.0.1:16686", Indexers: []string{"127.0.0.1:9095"}, Query: query.DefaultConfig(), UI: ui.DefaultConfig(), Alerts: alerting.DefaultConfig()}
}

// RegisterFlags registers the query flags; withIndexers is false in the
// all-in-one, which reads its own indexer.
func (c *QueryConfig) RegisterFlags(fs *flag.FlagSet, withIndexers bool) {
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "address of the query service: UI, Tempo/Jaeger-compatible APIs, /healthz, /readyz, /metrics")
	if withIndexers {
		fs.Func("indexers", "comma-separated indexer read API addresses (host:port) to fan out to; default "+strings.Join(c.Indexers, ","), func(s string) error {
			c.Indexers = nil
			for _, a := range strings.Split(s, ",") {
				if a = strings.TrimSpace(a); a != "" {
					c.Indexers = append(c.Indexers, a)
				}
			}
			return nil
		})
	}
	c.Query.RegisterFlags(fs)
	c.UI.RegisterFlags(fs)
	c.Alerts.RegisterFlags(fs)
}

// Query serves the HTTP APIs over the indexers' read APIs.
type Query struct {
	cfg     QueryConfig
	conns   []*grpc.ClientConn
	handler http.Handler
	alerts  *alerting.Store  // nil unless --alert-data-dir
	ruler   *alerting.Engine // nil unless --alert-rules
	log     *slog.Logger
	bound   chan net.Addr
}

// NewQuery dials the indexers (lazily: an indexer that is down is an error
// for the calls that need it, not for start-up) and builds the handler; the
// health endpoints h serves are mounted beside the APIs.
func NewQuery(cfg QueryConfig, logger *slog.Logger, h *health.Health) (*Query, error) {
	if len(cfg.Indexers) == 0 {
		return nil, errors.New("query: at least one indexer address is required (--indexers)")
	}
	if err := cfg.Query.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.UI.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Alerts.Validate(); err != nil {
		return nil, err
	}
	q := &Query{cfg: cfg, log: logger, bound: make(chan net.Addr, 1)}
	var readers []readerpb.ReaderClient
	var logReaders []logspb.LogReaderClient
	var metricReaders []metricspb.MetricReaderClient
	for _, addr := range cfg.Indexers {
		conn, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
		if err != nil {
			q.close()
			return nil, fmt.Errorf("dial indexer %s: %w", addr, err)
		}
		q.conns = append(q.conns, conn)
		readers = append(readers, readerpb.NewReaderClient(conn))
		logReaders = append(logReaders, logspb.NewLogReaderClient(conn))
		metricReaders = append(metricReaders, metricspb.NewMetricReaderClient(conn))
	}
	opts := []query.Option{query.WithLogReaders(logReaders), query.WithMetricReaders(metricReaders)}
	if cfg.Alerts.DataDir != "" {
		st, err := alerting.OpenStore(cfg.Alerts.DataDir, logger.With("component", "alerts"), h.Registry(), alerting.StoreOptions{Retention: cfg.Alerts.Retention})
		if err != nil {
			q.close()
			return nil, err
		}
		q.alerts = st
		opts = append(opts, query.WithAlerts(st, h.Registry()))
	}
	api := query.New(cfg.Query, readers, logger.With("component", "query"), h.Registry(), opts...)
	if cfg.Alerts.RulesFile != "" {
		groups, err := alerting.LoadRules(cfg.Alerts.RulesFile)
		if err == nil {
			q.ruler, err = alerting.NewEngine(groups, api.REDSource(), api.TraceLinker(), q.alerts, logger.With("component", "ruler"), h.Registry(), nil,
				alerting.WithMetricSource(api.MetricSource()))
		}
		if err != nil {
			q.close()
			return nil, fmt.Errorf("alert rules: %w", err)
		}
	}
	mux := http.NewServeMux()
	h.Register(mux)
	registerPprof(mux)
	api.Register(mux)
	ui.New(cfg.UI, logger.With("component", "ui")).Register(mux) // last: it is the catch-all
	q.handler = mux
	return q, nil
}

// Addr waits for and returns the bound HTTP address.
func (q *Query) Addr(ctx context.Context) (net.Addr, error) {
	select {
	case a := <-q.bound:
		q.bound <- a
		return a, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Run serves (and evaluates alert rules, when configured) until ctx ends.
func (q *Query) Run(ctx context.Context) error {
	defer q.close()
	rulerDone := make(chan error, 1)
	if q.ruler != nil {
		go func() { rulerDone <- q.ruler.Run(ctx) }()
	} else {
		rulerDone <- nil
	}
	err := serveHTTP(ctx, q.cfg.HTTPAddr, q.handler, q.log, "query HTTP", func(a net.Addr) { q.bound <- a })
	if rerr := <-rulerDone; rerr != nil && !errors.Is(rerr, context.Canceled) {
		err = errors.Join(err, fmt.Errorf("ruler: %w", rerr))
	}
	return err
}

func (q *Query) close() {
	for _, c := range q.conns {
		_ = c.Close()
	}
	if q.alerts != nil {
		_ = q.alerts.Close()
	}
}
