package netpol

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Protocol is a layer-4 protocol NetworkPolicy distinguishes.
type Protocol uint8

// The protocols NetworkPolicy ports name. They are distinct: a rule for
// SCTP 80 does not allow TCP 80.
const (
	TCP Protocol = iota
	UDP
	SCTP
	numProtocols
)

var protocolNames = [numProtocols]string{"TCP", "UDP", "SCTP"}

func (p Protocol) String() string {
	if p < numProtocols {
		return protocolNames[p]
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// ParseProtocol reads TCP, UDP or SCTP (case-insensitive, as CLIs accept
// it; manifests are checked case-sensitively by validation).
func ParseProtocol(s string) (Protocol, error) {
	for i, n := range protocolNames {
		if strings.EqualFold(s, n) {
			return Protocol(i), nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q: want TCP, UDP or SCTP", s)
}

// protocolOf maps a manifest protocol; nil means TCP, the API default.
func protocolOf(p *corev1.Protocol) (Protocol, bool) {
	if p == nil {
		return TCP, true
	}
	for i, n := range protocolNames {
		if string(*p) == n {
			return Protocol(i), true
		}
	}
	return 0, false
}

// Source says where an object was read: its file, its document in the file
// (1-based) and the line the document starts on.
type Source struct {
	File     string `json:"file"`
	Document int    `json:"document"`
	Line     int    `json:"line,omitempty"`
	// Item is the object's index in a List document, or -1.
	Item int `json:"item"`
}

func (s Source) String() string {
	var b strings.Builder
	b.WriteString(s.File)
	if s.Line > 0 {
		fmt.Fprintf(&b, ":%d", s.Line)
	}
	if s.Document > 0 {
		fmt.Fprintf(&b, " (document %d", s.Document)
		if s.Item >= 0 {
			fmt.Fprintf(&b, ", items[%d]", s.Item)
		}
		b.WriteString(")")
	}
	return b.String()
}

// Namespace is a namespace and its labels. Every namespace carries
// kubernetes.io/metadata.name, as the API server sets it.
type Namespace struct {
	Name   string
	Labels map[string]string
	// Implicit: no Namespace object was read; pods or policies use it.
	Implicit bool
	Source   Source
}

// ContainerPort is a port a pod's containers declare; named ports in
// policies resolve against these on the destination pod.
type ContainerPort struct {
	Name     string   `json:"name,omitempty"`
	Port     int32    `json:"port"`
	Protocol Protocol `json:"-"`
}

// Pod is a pod, or a workload standing for the pods its template makes.
type Pod struct {
	Namespace string
	Name      string
	// Kind is Pod, or the workload kind (Deployment, StatefulSet, DaemonSet,
	// ReplicaSet, ReplicationController, Job, CronJob).
	Kind           string
	Labels         map[string]string
	IPs            []netip.Addr // status.podIPs; none for workloads
	HostIP         netip.Addr   // status.hostIP, the node's address
	NodeName       string
	HostNetwork    bool
	ServiceAccount string
	Ports          []ContainerPort
	Source         Source
}

// ID is "namespace/name", as --from and --to name pods.
func (p *Pod) ID() string { return p.Namespace + "/" + p.Name }

// Ref is "Kind namespace/name".
func (p *Pod) Ref() string { return p.Kind + " " + p.ID() }

// Policy is one NetworkPolicy, as decoded; Types holds the effective
// policyTypes after the API's defaulting.
type Policy struct {
	Namespace string
	Name      string
	Spec      networkingv1.NetworkPolicySpec
	Ingress   bool // applies to the selected pods' ingress
	Egress    bool // applies to their egress
	Source    Source
	lines     func(field string) int // line of a field, 0 if unknown
}

// FieldSource returns where a field of the policy (such as
// "spec.ingress[0].from[1]") is, falling back to the policy's document.
func (p *Policy) FieldSource(field string) Source {
	s := p.Source
	if p.lines != nil {
		if n := p.lines(field); n > 0 {
			s.Line = n
		}
	}
	return s
}

// ID is "namespace/name".
func (p *Policy) ID() string { return p.Namespace + "/" + p.Name }

// effectiveTypes applies the API server's defaulting: without policyTypes,
// Ingress always, Egress if there are egress rules.
func effectiveTypes(spec *networkingv1.NetworkPolicySpec) (ingress, egress bool) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

// Severity of a Problem or lint Finding.
type Severity string

// Severities, most severe first.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
	SeverityInfo    Severity = "info"
)

func (s Severity) rank() int {
	switch s {
	case SeverityError:
		return 3
	case SeverityWarning:
		return 2
	case SeverityInfo:
		return 1
	}
	return 0
}

// AtLeast reports whether s is as severe as min.
func (s Severity) AtLeast(min Severity) bool { return s.rank() >= min.rank() }

// ParseSeverity reads error, warning or info.
func ParseSeverity(s string) (Severity, error) {
	switch Severity(s) {
	case SeverityError, SeverityWarning, SeverityInfo:
		return Severity(s), nil
	}
	return "", fmt.Errorf("unknown severity %q: want error, warning or info", s)
}

// Problem is something wrong with the input, with where it is.
type Problem struct {
	Source   Source   `json:"source"`
	Object   string   `json:"object,omitempty"` // "Kind namespace/name"
	Field    string   `json:"field,omitempty"`  // e.g. spec.ingress[0].ports[1].endPort
	Message  string   `json:"message"`
	Severity Severity `json:"severity"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.Source.String())
	b.WriteString(": ")
	if p.Severity != SeverityError {
		b.WriteString(string(p.Severity))
		b.WriteString(": ")
	}
	if p.Object != "" {
		b.WriteString(p.Object)
		b.WriteString(": ")
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Cluster is everything read from the input.
type Cluster struct {
	Namespaces []*Namespace // sorted by name
	Pods       []*Pod       // sorted by namespace, name, kind
	Policies   []*Policy    // sorted by namespace, name
	Problems   []Problem
	// Ignored counts objects of other kinds ("apps/v1 ConfigMap" → n).
	Ignored map[string]int
	// Finished counts pods skipped because they have terminated
	// (Succeeded or Failed): they have no network.
	Finished int
	// SkippedFiles are files in directories that held no Kubernetes objects.
	SkippedFiles []string
}

// Errors returns the error-severity problems.
func (c *Cluster) Errors() []Problem {
	var out []Problem
	for _, p := range c.Problems {
		if p.Severity == SeverityError {
			out = append(out, p)
		}
	}
	return out
}

// Warnings returns the problems that are not errors.
func (c *Cluster) Warnings() []Problem {
	var out []Problem
	for _, p := range c.Problems {
		if p.Severity != SeverityError {
			out = append(out, p)
		}
	}
	return out
}

// Err is an error listing every error-severity problem, or nil.
func (c *Cluster) Err() error {
	errs := c.Errors()
	if len(errs) == 0 {
		return nil
	}
	lines := make([]string, len(errs))
	for i, p := range errs {
		lines[i] = p.String()
	}
	return fmt.Errorf("%d %s in the input:\n  %s", len(errs), plural(len(errs), "error", "errors"), strings.Join(lines, "\n  "))
}

// Namespace returns the named namespace, or nil.
func (c *Cluster) Namespace(name string) *Namespace {
	i := sort.Search(len(c.Namespaces), func(i int) bool { return c.Namespaces[i].Name >= name })
	if i < len(c.Namespaces) && c.Namespaces[i].Name == name {
		return c.Namespaces[i]
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// labelString renders labels as k=v,k2=v2 in key order.
func labelString(m map[string]string) string {
	if len(m) == 0 {
		return "(no labels)"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(m[k])
	}
	return b.String()
}
