package netpol

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
)

// DefaultNamespace is where objects without metadata.namespace belong, as
// `kubectl apply` puts them without a context namespace.
const DefaultNamespace = "default"

// NamespaceNameLabel is the label the API server sets on every namespace.
const NamespaceNameLabel = corev1.LabelMetadataName

// LoadOptions configure Load.
type LoadOptions struct {
	// DefaultNamespace for objects without metadata.namespace ("default").
	DefaultNamespace string
	// Stdin is read for the path "-".
	Stdin io.Reader
}

// decoder decodes objects the way kubectl does: case-sensitive JSON with
// unknown and duplicate fields collected as strict-decoding errors, which
// Load reports as warnings (kubectl's --validate=warn) rather than errors.
var decoder = func() *kjson.Serializer {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err) // static registration; cannot fail
		}
	}
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme, kjson.SerializerOptions{Strict: true})
}()

// kinds Load reads, by group and kind, with the one version served.
var kinds = map[schema.GroupKind]string{
	{Group: "", Kind: "Namespace"}:                      "v1",
	{Group: "", Kind: "Pod"}:                            "v1",
	{Group: "", Kind: "ReplicationController"}:          "v1",
	{Group: "networking.k8s.io", Kind: "NetworkPolicy"}: "v1",
	{Group: "apps", Kind: "Deployment"}:                 "v1",
	{Group: "apps", Kind: "StatefulSet"}:                "v1",
	{Group: "apps", Kind: "DaemonSet"}:                  "v1",
	{Group: "apps", Kind: "ReplicaSet"}:                 "v1",
	{Group: "batch", Kind: "Job"}:                       "v1",
	{Group: "batch", Kind: "CronJob"}:                   "v1",
	{Group: "extensions", Kind: "NetworkPolicy"}:        "",
	{Group: "extensions", Kind: "Deployment"}:           "",
	{Group: "extensions", Kind: "DaemonSet"}:            "",
	{Group: "extensions", Kind: "ReplicaSet"}:           "",
}

// otherPolicyAPIs are policy kinds that change reachability but are not
// NetworkPolicy: results ignore them, so Load says so.
var otherPolicyAPIs = map[string]string{
	"projectcalico.org":        "Calico",
	"crd.projectcalico.org":    "Calico",
	"cilium.io":                "Cilium",
	"policy.networking.k8s.io": "AdminNetworkPolicy",
}

// Load reads manifests from files, directories (recursively) and "-"
// (stdin). Reading never stops at the first problem: every problem is in
// Cluster.Problems, errors and warnings, each with its file and document.
func Load(opts LoadOptions, paths ...string) *Cluster {
	l := newLoader(opts)
	for _, p := range paths {
		l.loadPath(p)
	}
	return l.finish()
}

// Parse reads one file's content (for tests and fuzzing, and for callers
// that already hold the bytes).
func Parse(opts LoadOptions, file string, data []byte) *Cluster {
	l := newLoader(opts)
	l.parse(file, data, false)
	return l.finish()
}

// object is a decoded object with where it came from.
type object struct {
	d      *doc
	src    Source
	kind   string // Kind, for workloads and duplicates
	ns     string
	name   string
	owners []metav1.OwnerReference
	nsObj  *Namespace
	pod    *Pod
	policy *Policy
}

type loader struct {
	opts   LoadOptions
	c      *Cluster
	objs   []*object
	stdinN int
}

func newLoader(opts LoadOptions) *loader {
	if opts.DefaultNamespace == "" {
		opts.DefaultNamespace = DefaultNamespace
	}
	return &loader{opts: opts, c: &Cluster{Ignored: map[string]int{}}}
}

func (l *loader) problem(sev Severity, src Source, object, field, format string, a ...any) {
	l.c.Problems = append(l.c.Problems, Problem{Source: src, Object: object, Field: field, Message: fmt.Sprintf(format, a...), Severity: sev})
}

func (l *loader) loadPath(p string) {
	if p == "-" {
		l.stdinN++
		if l.stdinN > 1 {
			l.problem(SeverityError, Source{File: "<stdin>", Item: -1}, "", "", "stdin (-) named more than once")
			return
		}
		if l.opts.Stdin == nil {
			l.problem(SeverityError, Source{File: "<stdin>", Item: -1}, "", "", "no stdin to read")
			return
		}
		data, err := io.ReadAll(l.opts.Stdin)
		if err != nil {
			l.problem(SeverityError, Source{File: "<stdin>", Item: -1}, "", "", "read: %v", err)
			return
		}
		l.parse("<stdin>", data, false)
		return
	}
	info, err := os.Stat(p)
	if err != nil {
		l.problem(SeverityError, Source{File: p, Item: -1}, "", "", "%v", unwrapPathErr(err))
		return
	}
	if !info.IsDir() {
		l.loadFile(p, false)
		return
	}
	err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			l.problem(SeverityError, Source{File: path, Item: -1}, "", "", "%v", unwrapPathErr(err))
			return nil
		}
		if d.IsDir() {
			if path != p && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir // .git and friends
			}
			return nil
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml", ".json":
			l.loadFile(path, true)
		}
		return nil
	})
	if err != nil {
		l.problem(SeverityError, Source{File: p, Item: -1}, "", "", "%v", err)
	}
}

func unwrapPathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func (l *loader) loadFile(path string, inDir bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		l.problem(SeverityError, Source{File: path, Item: -1}, "", "", "%v", unwrapPathErr(err))
		return
	}
	l.parse(path, data, inDir)
}

var strictRE = regexp.MustCompile(`^(unknown|duplicate) field "(.*)"$`)

func strictField(msg string) (field, text string) {
	if m := strictRE.FindStringSubmatch(msg); m != nil {
		return m[2], m[1] + " field"
	}
	return "", msg
}

var unmarshalRE = regexp.MustCompile(`cannot unmarshal (\w+) into Go (?:struct field (\S*) of type|value of type) (\S+)`)

// decodeErr turns a JSON type error into field and message, with the hint
// YAML 1.1 needs: unquoted y, yes, on, no, off are booleans there (as they
// are for kubectl).
func decodeErr(err error) (field, msg string) {
	text := strings.TrimPrefix(err.Error(), "json: ")
	m := unmarshalRE.FindStringSubmatch(text)
	if m == nil {
		return "", text
	}
	field = m[2]
	if i := strings.IndexByte(field, '.'); i >= 0 {
		field = field[i+1:] // drop the Go type name
	}
	msg = fmt.Sprintf("wrong type: got %s, want %s", jsonTypeName(m[1]), m[3])
	if m[1] == "bool" && m[3] == "string" {
		msg += " (YAML reads unquoted y, yes, on, n, no and off as booleans: quote the value)"
	}
	return field, msg
}

func jsonTypeName(t string) string {
	switch t {
	case "bool":
		return "a boolean"
	case "number":
		return "a number"
	case "string":
		return "a string"
	case "array":
		return "a list"
	case "object":
		return "a mapping"
	}
	return t
}

func joinField(prefix, field string) string {
	switch {
	case prefix == "":
		return field
	case field == "":
		return prefix
	}
	return prefix + "." + field
}

func (l *loader) meta(o *object, d *doc, itemPath string, m *metav1.ObjectMeta, namespaced bool) bool {
	o.name = m.Name
	if o.name == "" && m.GenerateName != "" {
		o.name = m.GenerateName
	}
	if namespaced {
		o.ns = m.Namespace
		if o.ns == "" {
			o.ns = l.opts.DefaultNamespace
		}
	}
	if o.name == "" {
		l.problem(SeverityError, l.lineOf(d, joinField(itemPath, "metadata"), o.src), o.kind, joinField(itemPath, "metadata.name"), "required")
		return false
	}
	o.owners = m.OwnerReferences
	return true
}

func (o *object) ref() string {
	if o.ns == "" {
		return o.kind + " " + o.name
	}
	return o.kind + " " + o.ns + "/" + o.name
}

func (l *loader) namespace(o *object, d *doc, itemPath string, v *corev1.Namespace) {
	if !l.meta(o, d, itemPath, &v.ObjectMeta, false) {
		return
	}
	labels := make(map[string]string, len(v.Labels)+1)
	for k, val := range v.Labels {
		labels[k] = val
	}
	labels[NamespaceNameLabel] = o.name // the API server sets it, whatever the manifest says
	o.nsObj = &Namespace{Name: o.name, Labels: labels, Source: o.src}
	l.objs = append(l.objs, o)
}

func (l *loader) pod(o *object, d *doc, itemPath string, v *corev1.Pod) {
	if !l.meta(o, d, itemPath, &v.ObjectMeta, true) {
		return
	}
	if v.Status.Phase == corev1.PodSucceeded || v.Status.Phase == corev1.PodFailed {
		l.c.Finished++
		return
	}
	p := &Pod{Namespace: o.ns, Name: o.name, Kind: "Pod", Labels: v.Labels, NodeName: v.Spec.NodeName,
		HostNetwork: v.Spec.HostNetwork, ServiceAccount: serviceAccount(&v.Spec), Source: o.src}
	p.Ports = l.containerPorts(o, d, itemPath, "spec", &v.Spec)
	seen := map[netip.Addr]bool{}
	addIP := func(field, s string) {
		if s == "" {
			return
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			l.problem(SeverityError, l.lineOf(d, joinField(itemPath, field), o.src), o.ref(), joinField(itemPath, field), "invalid IP %q", s)
			return
		}
		if !seen[ip.Unmap()] {
			seen[ip.Unmap()] = true
			p.IPs = append(p.IPs, ip.Unmap())
		}
	}
	addIP("status.podIP", v.Status.PodIP)
	for i, ip := range v.Status.PodIPs {
		addIP(fmt.Sprintf("status.podIPs[%d].ip", i), ip.IP)
	}
	if v.Status.HostIP != "" {
		if ip, err := netip.ParseAddr(v.Status.HostIP); err == nil {
			p.HostIP = ip.Unmap()
		} else {
			l.problem(SeverityError, l.lineOf(d, joinField(itemPath, "status.hostIP"), o.src), o.ref(), joinField(itemPath, "status.hostIP"), "invalid IP %q", v.Status.HostIP)
		}
	}
	if p.HostNetwork && !p.HostIP.IsValid() && len(p.IPs) > 0 {
		p.HostIP = p.IPs[0] // a hostNetwork pod's IP is its node's
	}
	o.pod = p
	l.objs = append(l.objs, o)
}

func serviceAccount(s *corev1.PodSpec) string {
	if s.ServiceAccountName != "" {
		return s.ServiceAccountName
	}
	if s.DeprecatedServiceAccount != "" {
		return s.DeprecatedServiceAccount
	}
	return "default"
}

func (l *loader) workload(o *object, d *doc, itemPath string, m *metav1.ObjectMeta, t *corev1.PodTemplateSpec, tpath string) {
	if !l.meta(o, d, itemPath, m, true) {
		return
	}
	if t == nil {
		l.problem(SeverityError, l.lineOf(d, itemPath, o.src), o.ref(), joinField(itemPath, tpath), "required: the pod template is what the pods would be")
		return
	}
	p := &Pod{Namespace: o.ns, Name: o.name, Kind: o.kind, Labels: t.Labels, HostNetwork: t.Spec.HostNetwork,
		ServiceAccount: serviceAccount(&t.Spec), Source: o.src}
	p.Ports = l.containerPorts(o, d, itemPath, tpath+".spec", &t.Spec)
	o.pod = p
	l.objs = append(l.objs, o)
}

// containerPorts collects the ports named ports can resolve to: those of
// the containers and of sidecar (restartPolicy: Always) init containers.
func (l *loader) containerPorts(o *object, d *doc, itemPath, specPath string, s *corev1.PodSpec) []ContainerPort {
	var out []ContainerPort
	add := func(path string, cs []corev1.Container, sidecarsOnly bool) {
		for i, c := range cs {
			if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				continue
			}
			for j, cp := range c.Ports {
				field := joinField(itemPath, fmt.Sprintf("%s.%s[%d].ports[%d]", specPath, path, i, j))
				proto, ok := protocolOf(&cp.Protocol)
				if cp.Protocol == "" {
					proto, ok = TCP, true
				}
				if !ok {
					l.problem(SeverityError, l.lineOf(d, field, o.src), o.ref(), field+".protocol", "unsupported value %q: want TCP, UDP or SCTP", cp.Protocol)
					continue
				}
				if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					l.problem(SeverityError, l.lineOf(d, field, o.src), o.ref(), field+".containerPort", "must be between 1 and 65535, inclusive")
					continue
				}
				out = append(out, ContainerPort{Name: cp.Name, Port: cp.ContainerPort, Protocol: proto})
			}
		}
	}
	add("containers", s.Containers, false)
	add("initContainers", s.InitContainers, true)
	return out
}

func (l *loader) policy(o *object, d *doc, itemPath string, v *networkingv1.NetworkPolicy) {
	if !l.meta(o, d, itemPath, &v.ObjectMeta, true) {
		return
	}
	bad := false
	for _, fe := range validatePolicy(&v.Spec) {
		field := joinField(itemPath, fe.field)
		l.problem(SeverityError, l.lineOf(d, field, o.src), o.ref(), field, "%s", fe.msg)
		bad = true
	}
	if bad {
		return // the API server would refuse it: it cannot be in the cluster
	}
	p := &Policy{Namespace: o.ns, Name: o.name, Spec: v.Spec, Source: o.src,
		lines: func(field string) int { return fieldLine(d, joinField(itemPath, field)) }}
	p.Ingress, p.Egress = effectiveTypes(&p.Spec)
	o.policy = p
	l.objs = append(l.objs, o)
}

// finish resolves what the objects mean together: later definitions
// replace earlier ones (as kubectl apply would), workloads whose pods are
// in the input give way to them, namespaces exist implicitly.
func (l *loader) finish() *Cluster {
	c := l.c
	type key struct{ kind, ns, name string }
	last := map[key]*object{}
	var order []*object
	for _, o := range l.objs {
		k := key{o.kind, o.ns, o.name}
		if prev, ok := last[k]; ok {
			l.problem(SeverityWarning, o.src, o.ref(), "", "defined again (first at %s): this definition is used, as kubectl apply would", prev.src)
			for i, x := range order {
				if x == prev {
					order = append(order[:i], order[i+1:]...)
					break
				}
			}
		}
		last[k] = o
		order = append(order, o)
	}

	// Owner graph: a workload stands for pods only when its pods (or the
	// objects between) are not in the input themselves.
	type ref struct{ ns, kind, name string }
	present := map[ref]*object{}
	for _, o := range order {
		if o.pod != nil {
			present[ref{o.ns, o.kind, o.name}] = o
		}
	}
	shadowed := map[*object]bool{}
	owner := func(o *object) *object {
		for _, or := range o.owners {
			if p, ok := present[ref{o.ns, or.Kind, or.Name}]; ok {
				return p
			}
		}
		return nil
	}
	for _, o := range order {
		if o.pod == nil {
			continue
		}
		if o.kind != "Pod" {
			if owner(o) != nil {
				shadowed[o] = true // its owner (a Deployment for a ReplicaSet) stands for the pods
			}
			continue
		}
		// Real pods stand for themselves: every workload above them gives way.
		seen := map[*object]bool{o: true}
		for cur := owner(o); cur != nil && !seen[cur]; cur = owner(cur) {
			seen[cur] = true
			shadowed[cur] = true
		}
	}

	nsByName := map[string]*Namespace{}
	for _, o := range order {
		switch {
		case o.nsObj != nil:
			nsByName[o.nsObj.Name] = o.nsObj
		case o.pod != nil && !shadowed[o]:
			c.Pods = append(c.Pods, o.pod)
		case o.policy != nil:
			c.Policies = append(c.Policies, o.policy)
		}
	}
	implicit := func(name string) {
		if _, ok := nsByName[name]; !ok {
			nsByName[name] = &Namespace{Name: name, Labels: map[string]string{NamespaceNameLabel: name}, Implicit: true}
		}
	}
	for _, p := range c.Pods {
		implicit(p.Namespace)
	}
	for _, p := range c.Policies {
		implicit(p.Namespace)
	}
	for _, ns := range nsByName {
		c.Namespaces = append(c.Namespaces, ns)
	}
	sort.Slice(c.Namespaces, func(i, j int) bool { return c.Namespaces[i].Name < c.Namespaces[j].Name })
	sort.Slice(c.Pods, func(i, j int) bool {
		a, b := c.Pods[i], c.Pods[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return kindOrder(a.Kind) < kindOrder(b.Kind)
	})
	sort.Slice(c.Policies, func(i, j int) bool {
		a, b := c.Policies[i], c.Policies[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	fileOrder := map[string]int{} // files in the order they were read
	for _, p := range c.Problems {
		if _, ok := fileOrder[p.Source.File]; !ok {
			fileOrder[p.Source.File] = len(fileOrder)
		}
	}
	sort.SliceStable(c.Problems, func(i, j int) bool {
		a, b := c.Problems[i].Source, c.Problems[j].Source
		if a.File != b.File {
			return fileOrder[a.File] < fileOrder[b.File]
		}
		if a.Document != b.Document {
			return a.Document < b.Document
		}
		return a.Line < b.Line
	})
	return c
}

func kindOrder(k string) string {
	if k == "Pod" {
		return ""
	}
	return k
}

// lineOf returns src with the line of field (a dotted path with [i]
// indexes) in the document, when it can be found.
func (l *loader) lineOf(d *doc, field string, src Source) Source {
	if n := fieldLine(d, field); n > 0 {
		src.Line = n
	}
	return src
}
