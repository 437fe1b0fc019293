package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Input is one authorization question: who (Source) is doing what
// (Request, nil for a TCP connection) to which workload (Destination).
type Input struct {
	Source      Peer
	Destination Destination
	Request     *Request // nil: a TCP connection, L4 policy only
	Connection  Connection
	// Extra holds top-level fields of a JSON input that the engine does not
	// use; they are passed to Rego unchanged.
	Extra map[string]any
}

// Peer is the caller. Principal is its SPIFFE ID ("spiffe://td/ns/x/sa/y")
// and must be empty unless the connection is mTLS-authenticated.
type Peer struct {
	Principal string
	Namespace string     // defaults to the /ns/<ns>/ of Principal
	IP        netip.Addr // the direct peer (source.ip, ipBlocks)
	RemoteIP  netip.Addr // the original client (remote.ip, remoteIpBlocks); defaults to IP
}

// Destination is the workload the policy protects.
type Destination struct {
	Principal string
	Namespace string
	Labels    map[string]string
	Port      uint32
	IP        netip.Addr
}

// Request is the HTTP part of an input.
type Request struct {
	Method string
	Path   string // as received; the engine normalizes it (see NormalizePath)
	Host   string
	// Headers with canonical keys (http.Header). Several values of one header
	// are matched joined by ",", as Envoy does.
	Headers http.Header
	Auth    *Auth // the verified JWT, if any
}

// Auth is what a verified request JWT says.
type Auth struct {
	Principal string // "iss/sub"
	Audiences []string
	Presenter string // azp
	Claims    map[string]any
}

// Connection is the transport.
type Connection struct {
	MTLS bool
	SNI  string
}

// Namespace and service name as a /ns/<ns>/sa/<sa> SPIFFE ID encodes them.
func spiffeNamespace(id string) string {
	_, rest, ok := strings.Cut(strings.TrimPrefix(id, "spiffe://"), "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// ServiceName is the last path segment of a SPIFFE ID
// (spiffe://example.org/ns/default/sa/api → api), the seeds' source_service.
func ServiceName(id string) string {
	rest := strings.TrimPrefix(id, "spiffe://")
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[i:]
	} else {
		return ""
	}
	return rest[strings.LastIndexByte(rest, '/')+1:]
}

// wireInput is the JSON input of `trustmesh policy eval` and of policy
// test files.
type wireInput struct {
	Source *struct {
		Principal string `json:"principal"`
		Namespace string `json:"namespace"`
		IP        string `json:"ip"`
		RemoteIP  string `json:"remote_ip"`
	} `json:"source"`
	Destination *struct {
		Principal string            `json:"principal"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
		Port      uint32            `json:"port"`
		IP        string            `json:"ip"`
	} `json:"destination"`
	Request *struct {
		Method  string         `json:"method"`
		Path    string         `json:"path"`
		Host    string         `json:"host"`
		Headers map[string]any `json:"headers"`
		Auth    *wireAuth      `json:"auth"`
	} `json:"request"`
	Connection *struct {
		MTLS *bool  `json:"mtls"`
		SNI  string `json:"sni"`
	} `json:"connection"`
	// The seeds' flat fields, accepted as input too.
	SpiffeID string `json:"spiffe_id"`
	Method   string `json:"method"`
	Path     string `json:"path"`
}

type wireAuth struct {
	Principal string         `json:"principal"`
	Audiences []string       `json:"audiences"`
	Presenter string         `json:"presenter"`
	Claims    map[string]any `json:"claims"`
}

var knownInputKeys = map[string]bool{
	"source": true, "destination": true, "request": true, "connection": true,
	"spiffe_id": true, "method": true, "path": true,
	// Derived for Rego; ignored when given.
	"source_service": true, "target_service": true,
}

// DecodeInput reads a JSON input document. When connection.mtls is false
// the source principal is dropped (a plaintext caller has no verified
// identity); when connection.mtls is absent it is true if a principal is
// given. The seeds' flat fields (spiffe_id, method, path) fill the
// structured ones they stand for when those are absent.
func DecodeInput(r io.Reader) (*Input, error) {
	data, err := io.ReadAll(io.LimitReader(r, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	return ParseInput(data)
}

// ParseInput is DecodeInput on bytes.
func ParseInput(data []byte) (*Input, error) {
	var w wireInput
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("input is not a valid JSON input document: %w", err)
	}
	var all map[string]any
	d2 := json.NewDecoder(bytes.NewReader(data))
	d2.UseNumber()
	if err := d2.Decode(&all); err != nil {
		return nil, fmt.Errorf("input must be a JSON object: %w", err)
	}
	in := &Input{}
	var err error
	for k, v := range all {
		if !knownInputKeys[k] {
			if in.Extra == nil {
				in.Extra = map[string]any{}
			}
			in.Extra[k] = v
		}
	}
	if w.Source != nil {
		in.Source.Principal = w.Source.Principal
		in.Source.Namespace = w.Source.Namespace
		if in.Source.IP, err = parseInputAddr("source.ip", w.Source.IP); err != nil {
			return nil, err
		}
		if in.Source.RemoteIP, err = parseInputAddr("source.remote_ip", w.Source.RemoteIP); err != nil {
			return nil, err
		}
	}
	if in.Source.Principal == "" {
		in.Source.Principal = w.SpiffeID
	}
	if p := in.Source.Principal; p != "" && !strings.HasPrefix(p, "spiffe://") {
		return nil, fmt.Errorf("source.principal %q: want a SPIFFE ID (spiffe://trust-domain/path)", p)
	}
	mtls := in.Source.Principal != ""
	if w.Connection != nil {
		if w.Connection.MTLS != nil {
			mtls = *w.Connection.MTLS
		}
		in.Connection.SNI = w.Connection.SNI
	}
	in.Connection.MTLS = mtls
	if !mtls {
		in.Source.Principal = ""
	}
	if w.Destination != nil {
		in.Destination.Principal = w.Destination.Principal
		in.Destination.Namespace = w.Destination.Namespace
		in.Destination.Labels = w.Destination.Labels
		in.Destination.Port = w.Destination.Port
		if in.Destination.IP, err = parseInputAddr("destination.ip", w.Destination.IP); err != nil {
			return nil, err
		}
	}
	if in.Destination.Namespace == "" {
		in.Destination.Namespace = spiffeNamespace(in.Destination.Principal)
	}
	if w.Request != nil || w.Method != "" || w.Path != "" {
		req := &Request{Method: w.Method, Path: w.Path}
		if w.Request != nil {
			if w.Request.Method != "" {
				req.Method = w.Request.Method
			}
			if w.Request.Path != "" {
				req.Path = w.Request.Path
			}
			req.Host = w.Request.Host
			if len(w.Request.Headers) > 0 {
				req.Headers = http.Header{}
				for k, v := range w.Request.Headers {
					switch t := v.(type) {
					case string:
						req.Headers.Add(k, t)
					case []any:
						for _, e := range t {
							s, ok := e.(string)
							if !ok {
								return nil, fmt.Errorf("request.headers[%s]: values must be strings", k)
							}
							req.Headers.Add(k, s)
						}
					default:
						return nil, fmt.Errorf("request.headers[%s]: want a string or a list of strings", k)
					}
				}
			}
			if a := w.Request.Auth; a != nil {
				req.Auth = &Auth{Principal: a.Principal, Audiences: a.Audiences, Presenter: a.Presenter, Claims: a.Claims}
			}
		}
		if req.Path == "" {
			req.Path = "/"
		}
		in.Request = req
	}
	return in, nil
}

func parseInputAddr(field, v string) (netip.Addr, error) {
	if v == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IP address", field, v)
	}
	return a.Unmap(), nil
}

// regoDocument is the input document a Rego policy sees: the structured
// request (the same shape as the JSON input) and the flat fields the seeds'
// policies read: spiffe_id, source_service, target_service, method, path.
// The path is the normalized one.
func (a *attrs) regoDocument() map[string]any {
	in := a.in
	src := map[string]any{"principal": in.Source.Principal, "namespace": a.srcNamespace}
	if in.Source.IP.IsValid() {
		src["ip"] = in.Source.IP.String()
	}
	if a.remoteIP.IsValid() {
		src["remote_ip"] = a.remoteIP.String()
	}
	dst := map[string]any{"principal": in.Destination.Principal, "namespace": in.Destination.Namespace, "port": in.Destination.Port}
	if in.Destination.Labels != nil {
		labels := make(map[string]any, len(in.Destination.Labels))
		for k, v := range in.Destination.Labels {
			labels[k] = v
		}
		dst["labels"] = labels
	}
	if in.Destination.IP.IsValid() {
		dst["ip"] = in.Destination.IP.String()
	}
	doc := map[string]any{}
	for k, v := range in.Extra {
		doc[k] = v
	}
	doc["source"] = src
	doc["destination"] = dst
	doc["connection"] = map[string]any{"mtls": in.Connection.MTLS, "sni": in.Connection.SNI}
	doc["spiffe_id"] = in.Source.Principal
	doc["source_service"] = ServiceName(in.Source.Principal)
	target := ServiceName(in.Destination.Principal)
	if r := in.Request; r != nil {
		if target == "" {
			target = hostWithoutPort(r.Host)
		}
		headers := make(map[string]any, len(r.Headers))
		for k, vs := range r.Headers {
			headers[strings.ToLower(k)] = strings.Join(vs, ",")
		}
		req := map[string]any{"method": r.Method, "path": a.path, "original_path": r.Path, "host": r.Host, "headers": headers}
		if au := r.Auth; au != nil {
			auds := make([]any, len(au.Audiences))
			for i, s := range au.Audiences {
				auds[i] = s
			}
			claims := map[string]any{}
			for k, v := range au.Claims {
				claims[k] = v
			}
			req["auth"] = map[string]any{"principal": au.Principal, "audiences": auds, "presenter": au.Presenter, "claims": claims}
		}
		doc["request"] = req
		doc["method"] = r.Method
		doc["path"] = a.path
	}
	doc["target_service"] = target
	return doc
}

func hostWithoutPort(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}
