package receiver

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// bodyEncoding is an OTLP/HTTP payload encoding; the response uses the
// request's.
type bodyEncoding int

const (
	encUnknown bodyEncoding = iota
	encProto
	encJSON
)

const (
	contentTypeProto = "application/x-protobuf"
	contentTypeJSON  = "application/json"
)

func encodingOf(contentType string) bodyEncoding {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return encUnknown
	}
	switch mt {
	case contentTypeProto:
		return encProto
	case contentTypeJSON:
		return encJSON
	}
	return encUnknown
}

// jsonToProtoFunc converts a signal's OTLP/JSON request (hex IDs) into its
// protobuf encoding, so both encodings share the raw export path.
type jsonToProtoFunc func(body []byte) ([]byte, error)

// maxPooledBody keeps rare huge request buffers out of the pool so one
// 16 MiB request does not pin 16 MiB per pooled buffer forever.
const maxPooledBody = 4 << 20

// httpExport serves one signal's OTLP/HTTP endpoint (POST /v1/traces, …).
type httpExport struct {
	r        *Receiver
	signal   string
	fromJSON jsonToProtoFunc
	export   exportFunc
	bodies   sync.Pool // *bytes.Buffer
}

func (r *Receiver) httpExportHandler(signal string, fromJSON jsonToProtoFunc, export exportFunc) http.Handler {
	return &httpExport{r: r, signal: signal, fromJSON: fromJSON, export: export}
}

func (h *httpExport) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	code := h.serve(w, req)
	m := h.r.metrics
	m.requests.WithLabelValues(h.signal, transportHTTP, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(h.signal, transportHTTP).Observe(time.Since(start).Seconds())
}

// serve handles one request and returns the HTTP status it answered with.
func (h *httpExport) serve(w http.ResponseWriter, req *http.Request) int {
	enc := encodingOf(req.Header.Get("Content-Type"))
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return h.writeStatus(w, enc, http.StatusMethodNotAllowed, codes.Unimplemented,
			fmt.Sprintf("method %s not allowed: OTLP/HTTP exports use POST", req.Method))
	}
	if enc == encUnknown {
		return h.writeStatus(w, enc, http.StatusUnsupportedMediaType, codes.InvalidArgument,
			fmt.Sprintf("unsupported Content-Type %q: use %s or %s", req.Header.Get("Content-Type"), contentTypeProto, contentTypeJSON))
	}
	gzipped := false
	switch ce := strings.ToLower(strings.TrimSpace(req.Header.Get("Content-Encoding"))); ce {
	case "", "identity":
	case "gzip":
		gzipped = true
	default:
		return h.writeStatus(w, enc, http.StatusUnsupportedMediaType, codes.InvalidArgument,
			fmt.Sprintf("unsupported Content-Encoding %q: use gzip or none", ce))
	}

	// Take the slot before reading the body, so refused requests cost no memory.
	if !h.r.limit.tryAcquire() {
		return h.writeError(w, enc, newExportError(errOverloaded, "too many concurrent export requests; retry later", nil))
	}
	defer h.r.limit.release()

	buf := h.getBuffer()
	defer h.putBuffer(buf)
	if err := h.readBody(buf, w, req, gzipped); err != nil {
		return h.writeError(w, enc, err)
	}
	body := buf.Bytes()
	if enc == encJSON {
		pb, err := h.fromJSON(body)
		if err != nil {
			return h.writeError(w, enc, newExportError(errMalformed, err.Error(), err))
		}
		body = pb
	}
	resp, err := h.export(req.Context(), transportHTTP, body)
	if err != nil {
		return h.writeError(w, enc, err)
	}
	return h.writeMessage(w, enc, http.StatusOK, resp)
}

// readBody reads the request into buf, enforcing MaxRequestBytes on the
// bytes sent and, for gzip, again on the bytes they inflate to: a few KiB of
// gzip can expand to gigabytes.
func (h *httpExport) readBody(buf *bytes.Buffer, w http.ResponseWriter, req *http.Request, gzipped bool) error {
	limit := int64(h.r.cfg.MaxRequestBytes)
	if req.ContentLength > limit {
		return newExportError(errTooLarge, fmt.Sprintf("request body of %d bytes exceeds the %d-byte limit", req.ContentLength, limit), nil)
	}
	var rd io.Reader = http.MaxBytesReader(w, req.Body, limit)
	if gzipped {
		zr, err := gzip.NewReader(rd)
		if err != nil {
			return bodyError(err, limit)
		}
		defer zr.Close()
		rd = zr
	} else if req.ContentLength > 0 {
		buf.Grow(int(req.ContentLength))
	}
	// One byte over the limit tells "exactly at the limit" from "too large".
	n, err := buf.ReadFrom(io.LimitReader(rd, limit+1))
	if err != nil {
		return bodyError(err, limit)
	}
	if n > limit {
		return newExportError(errTooLarge, fmt.Sprintf("decompressed request body exceeds the %d-byte limit", limit), nil)
	}
	return nil
}

func bodyError(err error, limit int64) error {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return newExportError(errTooLarge, fmt.Sprintf("request body exceeds the %d-byte limit", limit), err)
	}
	return newExportError(errMalformed, fmt.Sprintf("read request body: %v", err), err)
}

func (h *httpExport) getBuffer() *bytes.Buffer {
	if b, ok := h.bodies.Get().(*bytes.Buffer); ok {
		return b
	}
	return new(bytes.Buffer)
}

// putBuffer recycles buf; safe because export and fromJSON do not keep the
// request bytes (span.Splitter output does not alias its input).
func (h *httpExport) putBuffer(buf *bytes.Buffer) {
	if buf.Cap() > maxPooledBody {
		return
	}
	buf.Reset()
	h.bodies.Put(buf)
}

// writeError answers a refused request: the OTLP status code, Retry-After on
// retryable refusals, and a google.rpc.Status body in the request's encoding.
func (h *httpExport) writeError(w http.ResponseWriter, enc bodyEncoding, err error) int {
	ee, ok := errors.AsType[*exportError](err)
	if !ok {
		return h.writeStatus(w, enc, http.StatusInternalServerError, codes.Internal, err.Error())
	}
	if ee.kind.retryable {
		w.Header().Set("Retry-After", retryAfterSeconds(h.r.cfg.RetryAfter))
	}
	return h.writeStatus(w, enc, ee.kind.http, ee.kind.code, ee.msg)
}

func (h *httpExport) writeStatus(w http.ResponseWriter, enc bodyEncoding, httpCode int, code codes.Code, msg string) int {
	// A message may quote the request (a JSON parser's "invalid character
	// '\x9f'"), and a Status with invalid UTF-8 does not encode.
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	if enc == encUnknown {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(httpCode)
		_, _ = io.WriteString(w, msg+"\n")
		return httpCode
	}
	return h.writeMessage(w, enc, httpCode, status.New(code, msg).Proto())
}

func (h *httpExport) writeMessage(w http.ResponseWriter, enc bodyEncoding, httpCode int, m proto.Message) int {
	var (
		b   []byte
		err error
	)
	if enc == encJSON {
		w.Header().Set("Content-Type", contentTypeJSON)
		b, err = protojson.Marshal(m)
	} else {
		w.Header().Set("Content-Type", contentTypeProto)
		b, err = proto.Marshal(m)
	}
	if err != nil {
		// Our own small response messages always encode; if not, say so.
		h.r.logger.Error("encode otlp http response", "err", err)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		return http.StatusInternalServerError
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(httpCode)
	_, _ = w.Write(b)
	return httpCode
}
