package netpol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"
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
	ns0    *Namespace
	pod    *Pod
	policy *Policy
}

type loader struct {
	opts     LoadOptions
	c        *Cluster
	objs     []*object
	stdinErr bool
	stdinN   int
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

// doc is one document of a file, converted to JSON.
type doc struct {
	src  Source
	raw  []byte // as written (YAML or JSON), for line lookups
	base int    // the line raw starts on
	json []byte // nil when conversion failed
	err  error
	hdr  header
	node *yamlNode // parsed lazily, for line lookups
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Items []json.RawMessage `json:"items"`
}

func (h *header) isObject() bool { return h.APIVersion != "" || h.Kind != "" }

// parse reads a file's documents. A file found in a directory is a
// manifest file only if some document is a Kubernetes object; other YAML
// (Helm values, CI configs, a service graph) is skipped, and listed.
func (l *loader) parse(file string, data []byte, inDir bool) {
	docs := splitDocuments(file, data)
	manifest := !inDir
	for i := range docs {
		d := &docs[i]
		if d.err != nil || d.json == nil {
			continue
		}
		if err := utiljson.Unmarshal(d.json, &d.hdr); err != nil {
			field, msg := decodeErr(err)
			if field != "" {
				msg = field + ": " + msg
				d.src.Line = max(fieldLine(d, field), d.src.Line)
			}
			d.err = fmt.Errorf("not a Kubernetes object: %s", msg)
			continue
		}
		if d.hdr.isObject() {
			manifest = true
		}
	}
	if !manifest {
		l.c.SkippedFiles = append(l.c.SkippedFiles, file)
		for _, d := range docs {
			if d.err != nil {
				l.problem(SeverityWarning, d.src, "", "", "skipped file: %v", d.err)
				break
			}
		}
		return
	}
	for i := range docs {
		d := &docs[i]
		switch {
		case d.err != nil:
			l.problem(SeverityError, d.src, "", "", "%v", d.err)
		case d.json == nil:
			// an empty document
		case !d.hdr.isObject():
			l.problem(SeverityError, d.src, "", "", "not a Kubernetes object: no apiVersion or kind")
		default:
			l.object(d, d.src, d.json, d.hdr, "", "", "")
		}
	}
}

var docSeparator = regexp.MustCompile(`^---(\s|$)`)

// splitDocuments splits YAML on "---" lines (as kubectl's YAML reader
// does) and JSON into its top-level values, converting each to JSON.
func splitDocuments(file string, data []byte) []doc {
	trimmed := bytes.TrimLeft(data, " \t\r\n\ufeff")
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		return splitJSON(file, data)
	}
	var docs []doc
	start, line := 0, 1
	startLine := 1
	flush := func(end int) {
		raw := data[start:end]
		n := len(docs) + 1
		d := doc{src: Source{File: file, Document: n, Line: startLine, Item: -1}, raw: raw, base: startLine}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			docs = append(docs, d) // empty: kept for numbering
			return
		}
		j, err := yaml.YAMLToJSON(raw)
		switch {
		case err != nil:
			d.err, d.src.Line = yamlErr(err, startLine)
		case string(j) == "null":
		default:
			d.json = j
		}
		docs = append(docs, d)
	}
	for i := 0; i < len(data); {
		j := bytes.IndexByte(data[i:], '\n')
		end := len(data)
		if j >= 0 {
			end = i + j + 1
		}
		ln := data[i:end]
		if docSeparator.Match(ln) || bytes.Equal(bytes.TrimRight(ln, "\r\n"), []byte("...")) {
			if i > start || len(docs) > 0 {
				flush(i)
			}
			start, startLine = end, line+1
		}
		i = end
		line++
	}
	if start < len(data) || len(docs) == 0 {
		flush(len(data))
	}
	// Drop a trailing empty document left by a final separator.
	for len(docs) > 1 && docs[len(docs)-1].json == nil && docs[len(docs)-1].err == nil && len(bytes.TrimSpace(stripComments(docs[len(docs)-1].raw))) == 0 {
		docs = docs[:len(docs)-1]
	}
	return docs
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, ln := range bytes.Split(b, []byte("\n")) {
		t := bytes.TrimSpace(ln)
		if len(t) == 0 || t[0] == '#' || bytes.HasPrefix(t, []byte("%")) {
			continue
		}
		out = append(out, t...)
		out = append(out, '\n')
	}
	return out
}

var yamlLineRE = regexp.MustCompile(`^(?:error converting YAML to JSON: )?yaml: line (\d+): (.*)$`)

func yamlErr(err error, startLine int) (error, int) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return fmt.Errorf("invalid YAML: %s", m[2]), startLine + n - 1
	}
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	return fmt.Errorf("invalid YAML: %s", strings.TrimPrefix(msg, "yaml: ")), startLine
}

func splitJSON(file string, data []byte) []doc {
	dec := json.NewDecoder(bytes.NewReader(data))
	var docs []doc
	for {
		off := dec.InputOffset()
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			break
		}
		// Start of the value, not of the whitespace before it.
		for off < int64(len(data)) && strings.ContainsRune(" \t\r\n\ufeff", rune(data[off])) {
			off++
		}
		line := 1 + bytes.Count(data[:off], []byte("\n"))
		d := doc{src: Source{File: file, Document: len(docs) + 1, Line: line, Item: -1}}
		if err != nil {
			d.err = fmt.Errorf("invalid JSON: %v", trimJSONErr(err))
			var se *json.SyntaxError
			if errors.As(err, &se) {
				d.src.Line = 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			}
			docs = append(docs, d)
			break // the stream cannot be resynchronised
		}
		d.raw, d.json, d.base = raw, raw, line
		if string(bytes.TrimSpace(raw)) == "null" {
			d.json = nil
		}
		docs = append(docs, d)
	}
	return docs
}

func trimJSONErr(err error) string {
	return strings.TrimPrefix(err.Error(), "json: ")
}

// object decodes one object (a document, or an item of a List).
func (l *loader) object(d *doc, src Source, data []byte, h header, impliedAPIVersion, impliedKind, itemPath string) {
	if h.APIVersion == "" {
		h.APIVersion = impliedAPIVersion
	}
	if h.Kind == "" {
		h.Kind = impliedKind
	}
	ref := h.Kind
	if h.Metadata.Name != "" {
		ns := h.Metadata.Namespace
		if ns != "" {
			ref += " " + ns + "/" + h.Metadata.Name
		} else {
			ref += " " + h.Metadata.Name
		}
	}
	if h.Kind == "" {
		l.problem(SeverityError, src, "", itemPath, "no kind")
		return
	}
	if h.APIVersion == "" {
		l.problem(SeverityError, src, ref, itemPath, "no apiVersion")
		return
	}
	gv, err := schema.ParseGroupVersion(h.APIVersion)
	if err != nil {
		l.problem(SeverityError, src, ref, joinField(itemPath, "apiVersion"), "%v", err)
		return
	}
	if itemPath == "" && (strings.HasSuffix(h.Kind, "List") || h.Items != nil) {
		l.list(d, h)
		return
	}
	if strings.HasSuffix(h.Kind, "List") {
		l.problem(SeverityError, src, ref, itemPath, "a List inside a List")
		return
	}
	gk := schema.GroupKind{Group: gv.Group, Kind: h.Kind}
	want, known := kinds[gk]
	switch {
	case !known:
		if name, ok := otherPolicyAPIs[gv.Group]; ok {
			l.problem(SeverityWarning, src, ref, itemPath, "%s policies are not analyzed: results show NetworkPolicy alone, which may allow more than this cluster does", name)
		}
		l.c.Ignored[h.APIVersion+" "+h.Kind]++
		return
	case gv.Version != want || want == "":
		served := "apps/v1"
		switch {
		case h.Kind == "NetworkPolicy":
			served = "networking.k8s.io/v1"
		case gk.Group == "batch":
			served = "batch/v1"
		case gk.Group == "":
			served = "v1"
		}
		l.problem(SeverityError, src, ref, joinField(itemPath, "apiVersion"), "%s %s is not served by Kubernetes: use %s", h.APIVersion, h.Kind, served)
		return
	}
	gvk := gv.WithKind(h.Kind)
	var into runtime.Object
	switch h.Kind {
	case "Namespace":
		into = &corev1.Namespace{}
	case "Pod":
		into = &corev1.Pod{}
	case "ReplicationController":
		into = &corev1.ReplicationController{}
	case "NetworkPolicy":
		into = &networkingv1.NetworkPolicy{}
	case "Deployment":
		into = &appsv1.Deployment{}
	case "StatefulSet":
		into = &appsv1.StatefulSet{}
	case "DaemonSet":
		into = &appsv1.DaemonSet{}
	case "ReplicaSet":
		into = &appsv1.ReplicaSet{}
	case "Job":
		into = &batchv1.Job{}
	case "CronJob":
		into = &batchv1.CronJob{}
	}
	obj, _, err := decoder.Decode(data, &gvk, into)
	if err != nil {
		if se, ok := runtime.AsStrictDecodingError(err); ok && obj != nil {
			for _, e := range se.Errors() {
				field, msg := strictField(e.Error())
				l.problem(SeverityWarning, l.lineOf(d, joinField(itemPath, field), src), ref, joinField(itemPath, field), "%s (ignored, as kubectl does)", msg)
			}
		} else {
			field, msg := decodeErr(err)
			field = joinField(itemPath, field)
			l.problem(SeverityError, l.lineOf(d, field, src), ref, field, "%s", msg)
			return
		}
	}
	o := &object{src: src, kind: h.Kind, d: d}
	switch v := obj.(type) {
	case *corev1.Namespace:
		l.namespace(o, d, itemPath, v)
	case *corev1.Pod:
		l.pod(o, d, itemPath, v)
	case *networkingv1.NetworkPolicy:
		l.policy(o, d, itemPath, v)
	case *corev1.ReplicationController:
		l.workload(o, d, itemPath, &v.ObjectMeta, v.Spec.Template, "spec.template")
	case *appsv1.Deployment:
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *appsv1.StatefulSet:
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *appsv1.DaemonSet:
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *appsv1.ReplicaSet:
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *batchv1.Job:
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *batchv1.CronJob:
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.JobTemplate.Spec.Template, "spec.jobTemplate.spec.template")
	}
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

func (l *loader) list(d *doc, h header) {
	impliedKind := ""
	impliedAPIVersion := ""
	if h.Kind != "List" {
		impliedKind = strings.TrimSuffix(h.Kind, "List")
		impliedAPIVersion = h.APIVersion
	}
	for i, item := range h.Items {
		path := fmt.Sprintf("items[%d]", i)
		src := d.src
		src.Item = i
		src = l.lineOf(d, path, src)
		var ih header
		if err := utiljson.Unmarshal(item, &ih); err != nil {
			field, msg := decodeErr(err)
			field = joinField(path, field)
			l.problem(SeverityError, l.lineOf(d, field, src), "", field, "not a Kubernetes object: %s", msg)
			continue
		}
		l.object(d, src, item, ih, impliedAPIVersion, impliedKind, path)
	}
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
	o.ns0 = &Namespace{Name: o.name, Labels: labels, Source: o.src}
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
	for _, o := range order {
		if o.pod == nil {
			continue
		}
		// Walk up from this object through owners present in the input.
		cur, seen := o, map[*object]bool{}
		for !seen[cur] {
			seen[cur] = true
			var next *object
			for _, or := range cur.owners {
				if p, ok := present[ref{cur.ns, or.Kind, or.Name}]; ok {
					next = p
					break
				}
			}
			if next == nil {
				break
			}
			shadowed[next] = true // next's pods (or pod-makers) are listed
			cur = next
		}
	}

	nsByName := map[string]*Namespace{}
	for _, o := range order {
		switch {
		case o.ns0 != nil:
			nsByName[o.ns0.Name] = o.ns0
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
	sort.SliceStable(c.Problems, func(i, j int) bool {
		a, b := c.Problems[i].Source, c.Problems[j].Source
		if a.File != b.File {
			return false // keep file order as read
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
