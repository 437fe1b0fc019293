package policy

// These types mirror the security.istio.io v1 / v1beta1 schema field for
// field, so Istio YAML decodes unchanged. They are our own structs rather
// than istio.io/api's protobuf types because the loader must report every
// problem with its file and line, which a YAML node tree gives and
// protojson does not.

// Metadata is the part of a Kubernetes ObjectMeta that policy uses. Other
// metadata keys (uid, resourceVersion, managedFields, …) as `kubectl get -o
// yaml` prints them are accepted and ignored.
type Metadata struct {
	Name              string            `yaml:"name"`
	Namespace         string            `yaml:"namespace"`
	Labels            map[string]string `yaml:"labels"`
	Annotations       map[string]string `yaml:"annotations"`
	CreationTimestamp string            `yaml:"creationTimestamp"`
}

// lenient marks Metadata: unknown keys in it are not errors.
func (Metadata) lenient() {}

// AuthorizationPolicy is security.istio.io AuthorizationPolicy.
type AuthorizationPolicy struct {
	APIVersion string                  `yaml:"apiVersion"`
	Kind       string                  `yaml:"kind"`
	Metadata   Metadata                `yaml:"metadata"`
	Spec       AuthorizationPolicySpec `yaml:"spec"`
	Status     any                     `yaml:"status"`

	src source // where it was read from, for error messages
}

// AuthorizationPolicySpec is the policy body.
type AuthorizationPolicySpec struct {
	Selector   *WorkloadSelector       `yaml:"selector"`
	TargetRef  *PolicyTargetReference  `yaml:"targetRef"`
	TargetRefs []PolicyTargetReference `yaml:"targetRefs"`
	Rules      []*Rule                 `yaml:"rules"`
	Action     string                  `yaml:"action"`
	Provider   *ExtensionProvider      `yaml:"provider"`
}

// WorkloadSelector selects workloads by their labels.
type WorkloadSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

// PolicyTargetReference is the Gateway API attachment Istio also accepts.
// Trustmesh proxies are selected by labels only, so it is rejected with a
// clear error rather than silently ignored.
type PolicyTargetReference struct {
	Group     string `yaml:"group"`
	Kind      string `yaml:"kind"`
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace"`
}

// ExtensionProvider names the CUSTOM authorizer.
type ExtensionProvider struct {
	Name string `yaml:"name"`
}

// Rule matches requests from any of From, to any of To, when all of When.
type Rule struct {
	From []*RuleFrom  `yaml:"from"`
	To   []*RuleTo    `yaml:"to"`
	When []*Condition `yaml:"when"`
}

// RuleFrom wraps a Source.
type RuleFrom struct {
	Source *Source `yaml:"source"`
}

// RuleTo wraps an Operation.
type RuleTo struct {
	Operation *Operation `yaml:"operation"`
}

// Source is who sent the request. Fields are ANDed, values in a field ORed.
type Source struct {
	Principals           []string `yaml:"principals"`
	NotPrincipals        []string `yaml:"notPrincipals"`
	RequestPrincipals    []string `yaml:"requestPrincipals"`
	NotRequestPrincipals []string `yaml:"notRequestPrincipals"`
	Namespaces           []string `yaml:"namespaces"`
	NotNamespaces        []string `yaml:"notNamespaces"`
	IPBlocks             []string `yaml:"ipBlocks"`
	NotIPBlocks          []string `yaml:"notIpBlocks"`
	RemoteIPBlocks       []string `yaml:"remoteIpBlocks"`
	NotRemoteIPBlocks    []string `yaml:"notRemoteIpBlocks"`
	ServiceAccounts      []string `yaml:"serviceAccounts"`
	NotServiceAccounts   []string `yaml:"notServiceAccounts"`
}

// Operation is what the request does.
type Operation struct {
	Hosts      []string `yaml:"hosts"`
	NotHosts   []string `yaml:"notHosts"`
	Ports      []string `yaml:"ports"`
	NotPorts   []string `yaml:"notPorts"`
	Methods    []string `yaml:"methods"`
	NotMethods []string `yaml:"notMethods"`
	Paths      []string `yaml:"paths"`
	NotPaths   []string `yaml:"notPaths"`
}

// Condition is one `when` entry.
type Condition struct {
	Key       string   `yaml:"key"`
	Values    []string `yaml:"values"`
	NotValues []string `yaml:"notValues"`
}

// PeerAuthentication is security.istio.io PeerAuthentication.
type PeerAuthentication struct {
	APIVersion string                 `yaml:"apiVersion"`
	Kind       string                 `yaml:"kind"`
	Metadata   Metadata               `yaml:"metadata"`
	Spec       PeerAuthenticationSpec `yaml:"spec"`
	Status     any                    `yaml:"status"`

	src source
}

// PeerAuthenticationSpec sets the mTLS mode for workloads and ports.
type PeerAuthenticationSpec struct {
	Selector      *WorkloadSelector     `yaml:"selector"`
	MTLS          *MutualTLS            `yaml:"mtls"`
	PortLevelMTLS map[uint32]*MutualTLS `yaml:"portLevelMtls"`
}

// MutualTLS holds a mode: UNSET, DISABLE, PERMISSIVE or STRICT.
type MutualTLS struct {
	Mode string `yaml:"mode"`
}

// source records where an object came from: its file, document index and
// the line of every field (by path, e.g. "spec.rules[0].from[0]").
type source struct {
	file  string
	doc   int
	line  int // the document's first line
	lines map[string]int
}

// lineOf returns the line of the field at path, or of its nearest
// recorded ancestor.
func (s source) lineOf(path string) int {
	for p := path; p != ""; p = parentPath(p) {
		if l, ok := s.lines[p]; ok {
			return l
		}
	}
	return s.line
}

func parentPath(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		switch p[i] {
		case '.':
			return p[:i]
		case '[':
			return p[:i]
		}
	}
	return ""
}
