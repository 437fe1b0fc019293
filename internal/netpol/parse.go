package netpol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"
)

// doc is the text problems point into: a document of a file, or one item
// of a List document split out of it.
type doc struct {
	raw    []byte // as written (YAML or JSON)
	base   int    // the line raw starts on
	prefix string // field prefix raw stands for ("items[3]" for a split item)
	once   sync.Once
	node   *yamlNode // parsed lazily, for line lookups
}

// unit is one thing to decode: a document, or an item of a List.
type unit struct {
	d        *doc
	src      Source
	itemPath string // "items[3]", or "" for a document
	implAPI  string // apiVersion and kind a typed list's items may omit
	implKind string
	yaml     bool   // json still has to be converted from d.raw
	json     []byte // nil: an empty document
	err      error  // the document is not YAML/JSON, or not an object
	hdr      header
	list     bool // a List whose items follow as their own units

	// Decoding results, computed in parallel, applied in order.
	obj      k8sruntime.Object
	problems []Problem
	ignored  string // "apiVersion Kind" of an object of another kind
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
//
// Decoding runs on every CPU (YAML conversion dominates the cost of
// loading); problems and objects are applied in document order, so the
// result does not depend on scheduling.
func (l *loader) parse(file string, data []byte, inDir bool) {
	units := splitUnits(file, data)
	parallel(units, func(u *unit) { u.convert() })
	manifest := !inDir
	for _, u := range units {
		if u.err == nil && (u.hdr.isObject() || u.list) {
			manifest = true
		}
	}
	if !manifest {
		l.c.SkippedFiles = append(l.c.SkippedFiles, file)
		for _, u := range units {
			if u.err != nil {
				l.problem(SeverityWarning, u.src, "", "", "skipped file: %v", u.err)
				break
			}
		}
		return
	}
	units = expandLists(units)
	parallel(units, func(u *unit) { u.decode(l.opts.DefaultNamespace) })
	for _, u := range units {
		l.c.Problems = append(l.c.Problems, u.problems...)
		if u.ignored != "" {
			l.c.Ignored[u.ignored]++
		}
		if u.obj != nil {
			l.apply(u)
		}
	}
}

// parallel runs f on every unit, on every CPU.
func parallel(units []*unit, f func(*unit)) {
	workers := min(runtime.GOMAXPROCS(0), len(units))
	if workers <= 1 {
		for _, u := range units {
			f(u)
		}
		return
	}
	var wg sync.WaitGroup
	next := make(chan *unit, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range next {
				f(u)
			}
		}()
	}
	for _, u := range units {
		next <- u
	}
	close(next)
	wg.Wait()
}

var docSeparator = regexp.MustCompile(`^---(\s|$)`)

// splitUnits splits YAML on "---" lines (as kubectl's YAML reader does)
// and JSON into its top-level values. A YAML List laid out as kubectl
// prints it is split into its items here, so they convert in parallel.
func splitUnits(file string, data []byte) []*unit {
	trimmed := bytes.TrimLeft(data, " \t\r\n\ufeff")
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		return splitJSON(file, data)
	}
	var units []*unit
	start, line, startLine, n := 0, 1, 1, 0
	flush := func(end int) {
		n++
		raw := data[start:end]
		src := Source{File: file, Document: n, Line: startLine, Item: -1}
		if isBlank(raw) {
			units = append(units, &unit{d: &doc{raw: raw, base: startLine}, src: src}) // empty
			return
		}
		units = append(units, splitList(raw, startLine, src)...)
	}
	for i := 0; i < len(data); {
		j := bytes.IndexByte(data[i:], '\n')
		end := len(data)
		if j >= 0 {
			end = i + j + 1
		}
		ln := data[i:end]
		if docSeparator.Match(ln) || bytes.Equal(bytes.TrimRight(ln, "\r\n"), []byte("...")) {
			if i > start || n > 0 {
				flush(i)
			}
			start, startLine = end, line+1
		}
		i = end
		line++
	}
	if start < len(data) || n == 0 {
		flush(len(data))
	}
	// A final separator leaves an empty document that is not one.
	for len(units) > 1 && units[len(units)-1].itemPath == "" && isBlank(units[len(units)-1].d.raw) {
		units = units[:len(units)-1]
	}
	return units
}

// isBlank reports whether YAML text holds only comments and directives.
func isBlank(b []byte) bool {
	for _, ln := range bytes.Split(b, []byte("\n")) {
		t := bytes.TrimSpace(ln)
		if len(t) > 0 && t[0] != '#' && t[0] != '%' {
			return false
		}
	}
	return true
}

// splitList splits a List document kubectl's way of printing it
// (top-level keys at column 0, "items:" then "- " at column 0 starting
// each item, indented by two) into its items; any other document is one
// unit. The items are the same YAML, de-indented.
func splitList(raw []byte, startLine int, src Source) []*unit {
	whole := []*unit{{d: &doc{raw: raw, base: startLine}, src: src, yaml: true}}
	if !bytes.Contains(raw, []byte("\nitems:\n")) && !bytes.HasPrefix(raw, []byte("items:\n")) {
		return whole
	}
	var hdr []byte
	type item struct {
		text []byte
		line int
	}
	var items []item
	inItems := false
	lines := bytes.SplitAfter(raw, []byte("\n"))
	for i, ln := range lines {
		ln0 := bytes.TrimRight(ln, "\r\n")
		switch {
		case !inItems && string(bytes.TrimRight(ln0, " ")) == "items:":
			inItems = true
		case inItems && bytes.HasPrefix(ln0, []byte("- ")) || inItems && string(ln0) == "-":
			items = append(items, item{line: startLine + i})
			items[len(items)-1].text = append(items[len(items)-1].text, dedent(ln)...)
		case inItems && (len(bytes.TrimSpace(ln0)) == 0 || bytes.HasPrefix(ln0, []byte("  ")) || bytes.HasPrefix(bytes.TrimSpace(ln0), []byte("#"))):
			if len(items) == 0 {
				if len(bytes.TrimSpace(ln0)) == 0 || bytes.HasPrefix(bytes.TrimSpace(ln0), []byte("#")) {
					continue
				}
				return whole // indented content before the first dash: not kubectl's layout
			}
			items[len(items)-1].text = append(items[len(items)-1].text, dedent(ln)...)
		default:
			inItems = false
			hdr = append(hdr, ln...)
		}
	}
	if len(items) == 0 {
		return whole
	}
	var h header
	j, err := yaml.YAMLToJSON(hdr)
	if err != nil || utiljson.Unmarshal(j, &h) != nil || !strings.HasSuffix(h.Kind, "List") {
		return whole
	}
	out := []*unit{{d: &doc{raw: raw, base: startLine}, src: src, list: true, hdr: h}}
	implAPI, implKind := "", ""
	if h.Kind != "List" {
		implAPI, implKind = h.APIVersion, strings.TrimSuffix(h.Kind, "List")
	}
	for k, it := range items {
		path := fmt.Sprintf("items[%d]", k)
		s := src
		s.Item, s.Line = k, it.line
		out = append(out, &unit{d: &doc{raw: it.text, base: it.line, prefix: path}, src: s, itemPath: path, implAPI: implAPI, implKind: implKind, yaml: true})
	}
	return out
}

// dedent removes an item line's two columns: "- " or two spaces.
func dedent(ln []byte) []byte {
	switch {
	case bytes.HasPrefix(ln, []byte("- ")), bytes.HasPrefix(ln, []byte("  ")):
		return ln[2:]
	case bytes.HasPrefix(ln, []byte("-")):
		return ln[1:]
	}
	return ln
}

func splitJSON(file string, data []byte) []*unit {
	dec := json.NewDecoder(bytes.NewReader(data))
	var units []*unit
	for {
		off := dec.InputOffset()
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			break
		}
		for off < int64(len(data)) && strings.ContainsRune(" \t\r\n\ufeff", rune(data[off])) {
			off++
		}
		line := 1 + bytes.Count(data[:off], []byte("\n"))
		u := &unit{d: &doc{base: line}, src: Source{File: file, Document: len(units) + 1, Line: line, Item: -1}}
		if err != nil {
			u.err = fmt.Errorf("invalid JSON: %v", trimJSONErr(err))
			var se *json.SyntaxError
			if errors.As(err, &se) {
				u.src.Line = 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			}
			units = append(units, u)
			break // the stream cannot be resynchronised
		}
		u.d.raw = raw
		if string(bytes.TrimSpace(raw)) != "null" {
			u.json = raw
		}
		units = append(units, u)
	}
	return units
}

func trimJSONErr(err error) string {
	return strings.TrimPrefix(err.Error(), "json: ")
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

// convert turns YAML into JSON and reads the header.
func (u *unit) convert() {
	if u.list || u.err != nil {
		return
	}
	if u.yaml {
		u.yaml = false
		if isBlank(u.d.raw) {
			return
		}
		j, err := yaml.YAMLToJSON(u.d.raw)
		if err != nil {
			u.err, u.src.Line = yamlErr(err, u.d.base)
			return
		}
		if string(j) != "null" {
			u.json = j
		}
	}
	if u.json == nil {
		return
	}
	if u.json[0] != '{' {
		u.err = errors.New("not a Kubernetes object: want a mapping with apiVersion and kind")
		return
	}
	if err := utiljson.Unmarshal(u.json, &u.hdr); err != nil {
		field, msg := decodeErr(err)
		if field != "" {
			msg = field + ": " + msg
			u.src.Line = max(fieldLine(u.d, joinField(u.itemPath, field)), u.src.Line)
		}
		u.err = fmt.Errorf("not a Kubernetes object: %s", msg)
	}
}

// expandLists replaces List documents that were not split as text (JSON,
// or YAML in another layout) by units for their items.
func expandLists(units []*unit) []*unit {
	var out []*unit
	for _, u := range units {
		if u.list || u.err != nil || u.json == nil || u.itemPath != "" || !(strings.HasSuffix(u.hdr.Kind, "List") || u.hdr.Items != nil) {
			out = append(out, u)
			continue
		}
		u.list = true
		out = append(out, u)
		implAPI, implKind := "", ""
		if u.hdr.Kind != "List" {
			implAPI, implKind = u.hdr.APIVersion, strings.TrimSuffix(u.hdr.Kind, "List")
		}
		for k, item := range u.hdr.Items {
			path := fmt.Sprintf("items[%d]", k)
			s := u.src
			s.Item = k // its line is looked up only for a problem: a JSON dump is large
			iu := &unit{d: u.d, src: s, itemPath: path, implAPI: implAPI, implKind: implKind, json: item}
			iu.convert()
			out = append(out, iu)
		}
	}
	return out
}

func (u *unit) problem(sev Severity, field string, object, format string, a ...any) {
	src := u.src
	if field != "" {
		if n := fieldLine(u.d, field); n > 0 {
			src.Line = n
		}
	}
	u.problems = append(u.problems, Problem{Source: src, Object: object, Field: field, Message: fmt.Sprintf(format, a...), Severity: sev})
}

// decode checks what the unit is and decodes it with the k8s.io/api type
// of its kind. It touches nothing but the unit (it runs in parallel).
func (u *unit) decode(defaultNS string) {
	switch {
	case u.list:
		return
	case u.err != nil:
		u.problems = append(u.problems, Problem{Source: u.src, Message: u.err.Error(), Severity: SeverityError})
		return
	case u.json == nil:
		return // an empty document
	case !u.hdr.isObject() && u.implKind == "":
		u.problem(SeverityError, u.itemPath, "", "not a Kubernetes object: no apiVersion or kind")
		return
	}
	h := u.hdr
	if h.APIVersion == "" {
		h.APIVersion = u.implAPI
	}
	if h.Kind == "" {
		h.Kind = u.implKind
	}
	ref := h.Kind
	if h.Metadata.Name != "" {
		ns := h.Metadata.Namespace
		if ns == "" && h.Kind != "Namespace" {
			ns = defaultNS
		}
		ref += " " + strings.TrimPrefix(ns+"/", "/") + h.Metadata.Name
	}
	switch {
	case h.Kind == "":
		u.problem(SeverityError, u.itemPath, "", "no kind")
		return
	case h.APIVersion == "":
		u.problem(SeverityError, u.itemPath, ref, "no apiVersion")
		return
	}
	gv, err := schema.ParseGroupVersion(h.APIVersion)
	if err != nil {
		u.problem(SeverityError, joinField(u.itemPath, "apiVersion"), ref, "%v", err)
		return
	}
	if strings.HasSuffix(h.Kind, "List") {
		u.problem(SeverityError, u.itemPath, ref, "a List inside a List")
		return
	}
	gk := schema.GroupKind{Group: gv.Group, Kind: h.Kind}
	want, known := kinds[gk]
	switch {
	case !known:
		if name, ok := otherPolicyAPIs[gv.Group]; ok {
			u.problem(SeverityWarning, u.itemPath, ref, "%s policies are not analyzed: results show NetworkPolicy alone, which may allow more than this cluster does", name)
		}
		u.ignored = h.APIVersion + " " + h.Kind
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
		u.problem(SeverityError, joinField(u.itemPath, "apiVersion"), ref, "%s %s is not served by Kubernetes: use %s", h.APIVersion, h.Kind, served)
		return
	}
	gvk := gv.WithKind(h.Kind)
	var into k8sruntime.Object
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
	obj, _, err := decoder.Decode(u.json, &gvk, into)
	if err != nil {
		se, ok := k8sruntime.AsStrictDecodingError(err)
		if !ok || obj == nil {
			field, msg := decodeErr(err)
			u.problem(SeverityError, joinField(u.itemPath, field), ref, "%s", msg)
			return
		}
		for _, e := range se.Errors() {
			field, msg := strictField(e.Error())
			u.problem(SeverityWarning, joinField(u.itemPath, field), ref, "%s (ignored, as kubectl does)", msg)
		}
	}
	u.obj = obj
}

// apply records a decoded object.
func (l *loader) apply(u *unit) {
	o := &object{src: u.src, d: u.d}
	d, itemPath := u.d, u.itemPath
	switch v := u.obj.(type) {
	case *corev1.Namespace:
		o.kind = "Namespace"
		l.namespace(o, d, itemPath, v)
	case *corev1.Pod:
		o.kind = "Pod"
		l.pod(o, d, itemPath, v)
	case *networkingv1.NetworkPolicy:
		o.kind = "NetworkPolicy"
		l.policy(o, d, itemPath, v)
	case *corev1.ReplicationController:
		o.kind = "ReplicationController"
		l.workload(o, d, itemPath, &v.ObjectMeta, v.Spec.Template, "spec.template")
	case *appsv1.Deployment:
		o.kind = "Deployment"
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *appsv1.StatefulSet:
		o.kind = "StatefulSet"
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *appsv1.DaemonSet:
		o.kind = "DaemonSet"
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *appsv1.ReplicaSet:
		o.kind = "ReplicaSet"
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *batchv1.Job:
		o.kind = "Job"
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.Template, "spec.template")
	case *batchv1.CronJob:
		o.kind = "CronJob"
		l.workload(o, d, itemPath, &v.ObjectMeta, &v.Spec.JobTemplate.Spec.Template, "spec.jobTemplate.spec.template")
	}
}
