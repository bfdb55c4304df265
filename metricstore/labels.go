package metricstore

import (
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
)

type otlpKV = commonpb.KeyValue
