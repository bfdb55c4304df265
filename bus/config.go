// Package bus is Threadline's Kafka transport, built on franz-go: the
// collector's producer, the indexer's consumer-group reader with offsets that
// only advance past fully processed records, and the embedded Kafka-protocol
// broker (kfake) that the all-in-one and the tests run on one machine.
//
// Every signal is keyed by the lowercase hex trace ID and partitioned with
// Sarama's FNV-1a hash, as the OpenTelemetry Collector's kafka exporter does with
// partition_traces_by_id, so a trace lands on the same partition whether we or
// an OTel Collector wrote it, and one indexer sees all of it.
package bus

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// Config is how to reach Kafka and which topics carry which signal.
type Config struct {
	// Brokers are the seed brokers, host:port. Default: the embedded broker's address.
	Brokers []string
	// TracesTopic carries OTLP TracesData records. Default "otlp_spans" (the OTel
	// Collector kafka exporter's default).
	TracesTopic string
	// LogsTopic carries OTLP LogsData records. Default "otlp_logs".
	LogsTopic string
	// MetricsTopic carries OTLP MetricsData records. Default "otlp_metrics".
	MetricsTopic string
	// ExemplarsTopic carries exemplar links: per trace, an OTLP MetricsData
	// holding only the data points with exemplars of that trace, keyed by
	// the trace ID like its spans, so the indexer that owns the trace sees
	// them. It needs as many partitions as TracesTopic. Empty disables
	// exemplar links (and so keeping traces for alerting metrics' exemplars).
	// Default "otlp_exemplars".
	ExemplarsTopic string
	// ClientID names this process to the brokers. Default "threadline".
	ClientID string
	// ProduceTimeout bounds how long a record may wait for an acknowledgement
	// before the client is told to retry. Default 10s.
	ProduceTimeout time.Duration
	// Compression is the producer's batch compression: none, snappy, lz4 or
	// zstd. Default snappy. On the loadgen shape (BenchmarkCollectorIngest,
	// broker on the same host) snappy is ~30% of the collector's CPU
	// profile, yet none costs the collector the same CPU per span (0.19-0.21
	// CPU-s per 100k spans for both, interleaved runs) because it pushes
	// 5.2x the bytes through the kernel and the broker: 2.04 GB vs 0.39 GB
	// of broker data dir for 2.2M spans (~930 vs ~180 B/span), and the
	// indexer then reads 5x more too. lz4 costs ~25% more CPU than snappy.
	// none (the OTel Collector kafka exporter's default) only pays where
	// network and disk are free and CPU is not, e.g. a broker reached
	// without the loopback stack on a CPU-starved collector.
	Compression string
	// MaxBufferedBytes caps the producer's buffer; past it, requests get a
	// retryable backpressure error instead of growing memory. Default 64 MiB.
	MaxBufferedBytes int
	// TLS enables TLS to the brokers; TLSCAFile, TLSCertFile, TLSKeyFile and
	// TLSSkipVerify refine it. Default off.
	TLS           bool
	TLSCAFile     string
	TLSCertFile   string
	TLSKeyFile    string
	TLSSkipVerify bool
	// SASLMechanism is "", "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512", with
	// SASLUser and SASLPassword. Default "" (no SASL).
	SASLMechanism string
	SASLUser      string
	SASLPassword  string
	// Dial, when set, connects the clients to the brokers instead of the
	// network: the all-in-one sets it to its embedded broker's in-memory
	// connections (Embedded.Dial). Not a flag.
	Dial func(ctx context.Context, network, host string) (net.Conn, error)
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		Brokers:          []string{"127.0.0.1:9092"},
		TracesTopic:      "otlp_spans",
		LogsTopic:        "otlp_logs",
		MetricsTopic:     "otlp_metrics",
		ExemplarsTopic:   "otlp_exemplars",
		ClientID:         "threadline",
		ProduceTimeout:   10 * time.Second,
		Compression:      "snappy",
		MaxBufferedBytes: 64 << 20,
	}
}

// RegisterFlags registers the Kafka flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Func("kafka-brokers", "comma-separated Kafka/Redpanda seed brokers (host:port); default "+strings.Join(c.Brokers, ","), func(s string) error {
		c.Brokers = splitList(s)
		return nil
	})
	fs.StringVar(&c.TracesTopic, "kafka-traces-topic", c.TracesTopic, "topic for OTLP spans, keyed by hex trace ID")
	fs.StringVar(&c.LogsTopic, "kafka-logs-topic", c.LogsTopic, "topic for OTLP logs, keyed by hex trace ID")
	fs.StringVar(&c.MetricsTopic, "kafka-metrics-topic", c.MetricsTopic, "topic for OTLP metrics (whole requests, unkeyed)")
	fs.StringVar(&c.ExemplarsTopic, "kafka-exemplars-topic", c.ExemplarsTopic, "topic for exemplar links (per trace, keyed by hex trace ID; same partition count as the traces topic); empty disables them")
	fs.StringVar(&c.ClientID, "kafka-client-id", c.ClientID, "Kafka client ID")
	fs.DurationVar(&c.ProduceTimeout, "kafka-produce-timeout", c.ProduceTimeout, "how long a record may wait for Kafka's acknowledgement before the sender is told to retry")
	fs.StringVar(&c.Compression, "kafka-compression", c.Compression, "producer batch compression: none, snappy, lz4 or zstd")
	fs.IntVar(&c.MaxBufferedBytes, "kafka-max-buffered-bytes", c.MaxBufferedBytes, "producer buffer cap; beyond it requests are refused with a retryable error")
	fs.BoolVar(&c.TLS, "kafka-tls", c.TLS, "connect to Kafka with TLS")
	fs.StringVar(&c.TLSCAFile, "kafka-tls-ca-file", c.TLSCAFile, "PEM CA bundle to verify the brokers (default: system roots)")
	fs.StringVar(&c.TLSCertFile, "kafka-tls-cert-file", c.TLSCertFile, "PEM client certificate for mutual TLS")
	fs.StringVar(&c.TLSKeyFile, "kafka-tls-key-file", c.TLSKeyFile, "PEM client key for mutual TLS")
	fs.BoolVar(&c.TLSSkipVerify, "kafka-tls-insecure-skip-verify", c.TLSSkipVerify, "do not verify broker certificates (testing only)")
	fs.StringVar(&c.SASLMechanism, "kafka-sasl-mechanism", c.SASLMechanism, "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty: none)")
	fs.StringVar(&c.SASLUser, "kafka-sasl-user", c.SASLUser, "SASL user name")
	fs.StringVar(&c.SASLPassword, "kafka-sasl-password", c.SASLPassword, "SASL password")
}

// Validate rejects settings that cannot work together.
func (c *Config) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("kafka: at least one broker address is required (--kafka-brokers)")
	}
	if c.TracesTopic == "" || c.LogsTopic == "" || c.MetricsTopic == "" {
		return errors.New("kafka: topic names must not be empty")
	}
	if c.ProduceTimeout <= 0 {
		return fmt.Errorf("kafka: produce timeout must be positive, got %s", c.ProduceTimeout)
	}
	if _, err := c.codec(); err != nil {
		return err
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("kafka: --kafka-tls-cert-file and --kafka-tls-key-file go together")
	}
	switch strings.ToUpper(c.SASLMechanism) {
	case "":
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		if c.SASLUser == "" {
			return fmt.Errorf("kafka: SASL mechanism %s needs --kafka-sasl-user", c.SASLMechanism)
		}
	default:
		return fmt.Errorf("kafka: unknown SASL mechanism %q; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASLMechanism)
	}
	return nil
}

// Topics returns every signal topic, in the order the indexer subscribes to
// them: spans, logs, metrics and (unless disabled) exemplar links.
func (c Config) Topics() []string {
	ts := []string{c.TracesTopic, c.LogsTopic, c.MetricsTopic}
	if c.ExemplarsTopic != "" {
		ts = append(ts, c.ExemplarsTopic)
	}
	return ts
}

// clientOpts are the options every client shares: brokers, TLS, SASL.
func (c *Config) clientOpts() ([]kgo.Opt, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(c.Brokers...), kgo.ClientID(c.ClientID)}
	if c.Dial != nil {
		opts = append(opts, kgo.Dialer(c.Dial))
	}
	if c.TLS || c.TLSCAFile != "" || c.TLSCertFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.TLSSkipVerify} //nolint:gosec // opt-in for testing
		if c.TLSCAFile != "" {
			pem, err := os.ReadFile(c.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("read kafka CA file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("kafka CA file %s holds no PEM certificate", c.TLSCAFile)
			}
		}
		if c.TLSCertFile != "" {
			cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
			if err != nil {
				return nil, fmt.Errorf("load kafka client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	var mech sasl.Mechanism
	switch strings.ToUpper(c.SASLMechanism) {
	case "PLAIN":
		mech = plain.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsMechanism()
	case "SCRAM-SHA-256":
		mech = scram.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsSha256Mechanism()
	case "SCRAM-SHA-512":
		mech = scram.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsSha512Mechanism()
	}
	if mech != nil {
		opts = append(opts, kgo.SASL(mech))
	}
	return opts, nil
}

// codec maps Compression to franz-go's codec.
func (c *Config) codec() (kgo.CompressionCodec, error) {
	switch strings.ToLower(c.Compression) {
	case "none", "":
		return kgo.NoCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.NoCompression(), fmt.Errorf("kafka: unknown compression %q; use none, snappy, lz4 or zstd", c.Compression)
}

// Partitioner is the OTel Collector kafka exporter's partitioner: Sarama's
// FNV-1a key hash, so both put one trace ID on the same partition.
func Partitioner() kgo.Partitioner {
	return kgo.StickyKeyPartitioner(kgo.SaramaCompatHasher(func(b []byte) uint32 {
		h := fnv.New32a()
		_, _ = h.Write(b)
		return h.Sum32()
	}))
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
