package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Severity of a Problem.
const (
	SeverityError   = "error"
	SeverityWarning = "warning"
)

// Problem is one finding about the policy sources, with its place.
type Problem struct {
	File     string `json:"file"`
	Line     int    `json:"line,omitempty"`
	Field    string `json:"field,omitempty"` // e.g. spec.rules[0].from[0].source.principals[1]
	Message  string `json:"message"`
	Severity string `json:"severity"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Severity == SeverityWarning {
		b.WriteString("warning: ")
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// RegoModule is one .rego file.
type RegoModule struct {
	File string
	Text string
}

// Sources is everything read from policy paths: Istio objects, Rego
// modules, data documents, and the problems found while reading them.
// Reading never stops at the first problem.
type Sources struct {
	AuthorizationPolicies []*AuthorizationPolicy
	PeerAuthentications   []*PeerAuthentication
	RegoModules           []RegoModule
	Data                  map[string]any
	Problems              []Problem
	SkippedKinds          map[string]int // other Kubernetes kinds seen and ignored
}

// Load reads policy files and directories (recursively). In a directory,
// *.yaml, *.yml and *.json files are Kubernetes manifests, except files
// named data.{json,yaml,yml} (data documents, mounted at their directory's
// path below the loaded root, as `opa run` does) and *_test.{yaml,yml}
// (policy tests, see RunTests); *.rego files are Rego modules. A path
// named on its own is always read for what its extension says.
func Load(paths ...string) *Sources {
	s := &Sources{}
	for _, p := range paths {
		s.loadPath(p)
	}
	return s
}

// Errors returns the error-severity problems.
func (s *Sources) Errors() []Problem {
	var out []Problem
	for _, p := range s.Problems {
		if p.Severity == SeverityError {
			out = append(out, p)
		}
	}
	return out
}

// Err joins the error-severity problems into one error (nil if none).
func (s *Sources) Err() error { return problemsErr(s.Errors()) }

func problemsErr(ps []Problem) error {
	if len(ps) == 0 {
		return nil
	}
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = errors.New(p.String())
	}
	return errors.Join(errs...)
}

func (s *Sources) errorf(file string, line int, field, format string, a ...any) {
	s.Problems = append(s.Problems, Problem{File: file, Line: line, Field: field, Message: fmt.Sprintf(format, a...), Severity: SeverityError})
}

func (s *Sources) warnf(file string, line int, field, format string, a ...any) {
	s.Problems = append(s.Problems, Problem{File: file, Line: line, Field: field, Message: fmt.Sprintf(format, a...), Severity: SeverityWarning})
}

func (s *Sources) loadPath(root string) {
	info, err := os.Stat(root)
	if err != nil {
		s.errorf(root, 0, "", "%v", unwrapPathErr(err))
		return
	}
	if !info.IsDir() {
		s.loadFile(root, nil, true)
		return
	}
	var files []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			s.errorf(p, 0, "", "%v", unwrapPathErr(err))
			return nil
		}
		if d.IsDir() {
			if p != root && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		files = append(files, p)
		return nil
	})
	if err != nil {
		s.errorf(root, 0, "", "%v", err)
	}
	sort.Strings(files)
	for _, f := range files {
		rel, _ := filepath.Rel(root, filepath.Dir(f))
		var prefix []string
		if rel != "." && rel != "" {
			prefix = strings.Split(filepath.ToSlash(rel), "/")
		}
		s.loadFile(f, prefix, false)
	}
}

func unwrapPathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// IsTestFile reports whether a file name is a policy test file.
func IsTestFile(name string) bool {
	base := filepath.Base(name)
	return strings.HasSuffix(base, "_test.yaml") || strings.HasSuffix(base, "_test.yml")
}

func isDataFile(name string) bool {
	switch filepath.Base(name) {
	case "data.json", "data.yaml", "data.yml":
		return true
	}
	return false
}

func (s *Sources) loadFile(path string, dataPrefix []string, named bool) {
	ext := strings.ToLower(filepath.Ext(path))
	isManifest := ext == ".yaml" || ext == ".yml" || ext == ".json"
	switch {
	case ext == ".rego":
	case isManifest && isDataFile(path) && !named:
	case isManifest && IsTestFile(path) && !named:
		return
	case isManifest:
	default:
		if named {
			s.errorf(path, 0, "", "not a policy file: want .yaml, .yml, .json or .rego")
		}
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		s.errorf(path, 0, "", "%v", unwrapPathErr(err))
		return
	}
	switch {
	case ext == ".rego":
		s.RegoModules = append(s.RegoModules, RegoModule{File: path, Text: string(data)})
	case isDataFile(path) && !named:
		s.addData(path, dataPrefix, data)
	case IsTestFile(path):
		s.errorf(path, 0, "", "this is a policy test file: run it with `trustmesh policy test`")
	default:
		s.Parse(path, data)
	}
}

// LoadData reads a JSON or YAML data document (an object) for Rego and
// merges it at the root of `data`.
func (s *Sources) LoadData(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		s.errorf(path, 0, "", "%v", unwrapPathErr(err))
		return
	}
	s.addData(path, nil, data)
}

func (s *Sources) addData(file string, prefix []string, data []byte) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		s.errorf(file, yamlErrLine(err), "", "data document is not valid JSON or YAML: %v", trimYAMLErr(err))
		return
	}
	if v == nil {
		return
	}
	v, err := jsonCompatible(v)
	if err != nil {
		s.errorf(file, 0, "", "data document: %v", err)
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		s.errorf(file, 0, "", "data document must be an object, not %T", v)
		return
	}
	if s.Data == nil {
		s.Data = map[string]any{}
	}
	at := s.Data
	for _, seg := range prefix {
		next, ok := at[seg].(map[string]any)
		if !ok {
			if _, exists := at[seg]; exists {
				s.errorf(file, 0, "", "data path %s is already set to a non-object", strings.Join(prefix, "."))
				return
			}
			next = map[string]any{}
			at[seg] = next
		}
		at = next
	}
	if err := mergeData(at, obj, strings.Join(prefix, ".")); err != nil {
		s.errorf(file, 0, "", "%v", err)
	}
}

func mergeData(dst, src map[string]any, path string) error {
	for k, v := range src {
		p := k
		if path != "" {
			p = path + "." + k
		}
		old, exists := dst[k]
		if !exists {
			dst[k] = v
			continue
		}
		om, ok1 := old.(map[string]any)
		nm, ok2 := v.(map[string]any)
		if !ok1 || !ok2 {
			return fmt.Errorf("data key %s is defined twice", p)
		}
		if err := mergeData(om, nm, p); err != nil {
			return err
		}
	}
	return nil
}

// jsonCompatible turns YAML's map[any]any into map[string]any so OPA can
// use the value.
func jsonCompatible(v any) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			c, err := jsonCompatible(e)
			if err != nil {
				return nil, err
			}
			t[k] = c
		}
		return t, nil
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("object key %v is not a string", k)
			}
			c, err := jsonCompatible(e)
			if err != nil {
				return nil, err
			}
			out[ks] = c
		}
		return out, nil
	case []any:
		for i, e := range t {
			c, err := jsonCompatible(e)
			if err != nil {
				return nil, err
			}
			t[i] = c
		}
		return t, nil
	}
	return v, nil
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

func yamlErrLine(err error) int {
	m := yamlLineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func trimYAMLErr(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	return yamlLineRE.ReplaceAllString(strings.TrimPrefix(msg, "unmarshal errors:\n  "), "")
}

// Istio API versions accepted for both kinds.
var istioVersions = map[string]bool{
	"security.istio.io/v1":      true,
	"security.istio.io/v1beta1": true,
}

// Parse reads the Kubernetes manifests in data (multi-document YAML or
// JSON; `kind: List` and typed lists such as AuthorizationPolicyList are
// unpacked). Kinds other than AuthorizationPolicy and PeerAuthentication
// are counted in SkippedKinds.
func (s *Sources) Parse(file string, data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for doc := 0; ; doc++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			s.errorf(file, yamlErrLine(err), "", "not valid YAML: %s", trimYAMLErr(err))
			return
		}
		root := &n
		if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
			root = root.Content[0]
		}
		if isNull(root) {
			continue
		}
		if root.Kind != yaml.MappingNode {
			s.errorf(file, root.Line, "", "document %d is not a Kubernetes object (want a mapping with apiVersion and kind)", doc)
			continue
		}
		s.parseObject(file, doc, root, "")
	}
}

func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func scalar(n *yaml.Node) string {
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

// parseObject handles one object; impliedKind is the item kind of a
// typed list, used when an item omits `kind`.
func (s *Sources) parseObject(file string, doc int, n *yaml.Node, impliedKind string) {
	apiVersion := scalar(mapValue(n, "apiVersion"))
	kind := scalar(mapValue(n, "kind"))
	if kind == "" {
		kind = impliedKind
	}
	if kind == "" {
		s.errorf(file, n.Line, "kind", "document %d has no kind", doc)
		return
	}
	if kind == "List" || (strings.HasSuffix(kind, "List") && len(kind) > 4) {
		items := mapValue(n, "items")
		if items == nil || isNull(items) {
			return
		}
		if items.Kind != yaml.SequenceNode {
			s.errorf(file, items.Line, "items", "items must be a list")
			return
		}
		item := ""
		if kind != "List" {
			item = strings.TrimSuffix(kind, "List")
		}
		for _, it := range items.Content {
			if it.Kind != yaml.MappingNode {
				s.errorf(file, it.Line, "items", "list item is not an object")
				continue
			}
			if item != "" && scalar(mapValue(it, "apiVersion")) == "" && apiVersion != "" {
				// Typed list items may omit apiVersion too; the list's own applies.
				it = withKey(it, "apiVersion", apiVersion)
			}
			s.parseObject(file, doc, it, item)
		}
		return
	}
	switch kind {
	case "AuthorizationPolicy", "PeerAuthentication":
	default:
		if s.SkippedKinds == nil {
			s.SkippedKinds = map[string]int{}
		}
		s.SkippedKinds[kind]++
		return
	}
	if !istioVersions[apiVersion] {
		s.errorf(file, n.Line, "apiVersion", "%s: apiVersion %q is not supported: want security.istio.io/v1 or security.istio.io/v1beta1", kind, apiVersion)
		return
	}
	src := source{file: file, doc: doc, line: n.Line, lines: map[string]int{}}
	var target any
	var ap *AuthorizationPolicy
	var pa *PeerAuthentication
	if kind == "AuthorizationPolicy" {
		ap = &AuthorizationPolicy{}
		target = ap
	} else {
		pa = &PeerAuthentication{}
		target = pa
	}
	// Even with field errors the object is kept, so that compiling it
	// reports its other problems too: validation reports everything at once.
	s.decodeStrict(file, n, target, &src)
	if ap != nil {
		ap.Kind, ap.src = kind, src
		s.AuthorizationPolicies = append(s.AuthorizationPolicies, ap)
	} else {
		pa.Kind, pa.src = kind, src
		s.PeerAuthentications = append(s.PeerAuthentications, pa)
	}
}

// withKey returns a copy of mapping n with key set to value.
func withKey(n *yaml.Node, key, value string) *yaml.Node {
	c := *n
	c.Content = append([]*yaml.Node{
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: key, Line: n.Line},
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: value, Line: n.Line},
	}, n.Content...)
	return &c
}

// decodeStrict decodes n into v, reporting unknown fields (with their
// line and path) and type errors. yaml.v3's Node.Decode cannot reject
// unknown fields itself, so the tree is first checked against v's type.
func (s *Sources) decodeStrict(file string, n *yaml.Node, v any, src *source) bool {
	before := len(s.Problems)
	s.checkFields(file, n, reflect.TypeOf(v), "", src)
	if err := n.Decode(v); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, e := range te.Errors {
				s.errorf(file, yamlErrLine(errors.New(e)), "", "%s", yamlLineRE.ReplaceAllString(e, ""))
			}
		} else {
			s.errorf(file, yamlErrLine(err), "", "%s", trimYAMLErr(err))
		}
	}
	for _, p := range s.Problems[before:] {
		if p.Severity == SeverityError {
			return false
		}
	}
	return true
}

type lenientYAML interface{ lenient() }

var lenientType = reflect.TypeOf((*lenientYAML)(nil)).Elem()

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (s *Sources) checkFields(file string, n *yaml.Node, t reflect.Type, path string, src *source) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if path != "" {
		if _, seen := src.lines[path]; !seen {
			src.lines[path] = n.Line
		}
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return // a type error, which Decode reports
		}
		fields := yamlFields(t)
		lenient := t.Implements(lenientType)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			fp := joinPath(path, k.Value)
			src.lines[fp] = k.Line
			f, ok := fields[k.Value]
			if !ok {
				if !lenient {
					s.errorf(file, k.Line, fp, "unknown field %q%s", k.Value, suggestField(k.Value, fields))
				}
				continue
			}
			s.checkFields(file, val, f.Type, fp, src)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, c := range n.Content {
			s.checkFields(file, c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), src)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			fp := path + "[" + k.Value + "]"
			src.lines[fp] = k.Line
			s.checkFields(file, val, t.Elem(), fp, src)
		}
	}
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := make(map[string]reflect.StructField, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[name] = f
	}
	return out
}

// suggestField names a known field that differs from a typo only in case
// or a trailing "s" (principal → principals).
func suggestField(got string, fields map[string]reflect.StructField) string {
	var names []string
	for k := range fields {
		if strings.EqualFold(k, got) || strings.EqualFold(k, got+"s") || strings.EqualFold(k+"s", got) {
			names = append(names, k)
		}
	}
	if len(names) == 1 {
		return fmt.Sprintf(" (did you mean %q?)", names[0])
	}
	return ""
}
