package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// TestFile is a policy test file (*_test.yaml), run by `trustmesh policy
// test` the way `opa test` runs *_test.rego: each case is an input and the
// decision it must get. Policies default to those in the file's own
// directory.
type TestFile struct {
	TrustDomain        string     `yaml:"trust_domain"`
	TrustDomainAliases []string   `yaml:"trust_domain_aliases"`
	RootNamespaces     []string   `yaml:"root_namespaces"`
	Query              string     `yaml:"query"`
	RegoVersion        string     `yaml:"rego_version"`
	Policies           []string   `yaml:"policies"` // relative to the file
	Data               []string   `yaml:"data"`     // relative to the file
	Tests              []TestCase `yaml:"tests"`
}

// TestCase is one test.
type TestCase struct {
	Name   string `yaml:"name"`
	Input  any    `yaml:"input"`
	Expect string `yaml:"expect"` // allow | deny
	// Optional: the deciding policy and rule, and a substring of the reason.
	Policy *string `yaml:"policy"`
	Rule   *int    `yaml:"rule"`
	Reason string  `yaml:"reason"`
	// Optional: a PeerAuthentication question instead of an authorization
	// one, with expect_mode naming the mode.
	MTLS       *MTLSQuery `yaml:"mtls"`
	ExpectMode string     `yaml:"expect_mode"`
}

// MTLSQuery asks which mode applies to a workload port.
type MTLSQuery struct {
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
	Port      uint32            `yaml:"port"`
}

// TestResult is the outcome of one case.
type TestResult struct {
	File     string    `json:"file"`
	Name     string    `json:"name"`
	Pass     bool      `json:"pass"`
	Message  string    `json:"message,omitempty"`
	Decision *Decision `json:"-"`
}

// FindTestFiles returns the test files under paths (files named directly
// are taken as they are).
func FindTestFiles(paths []string) ([]string, []Problem) {
	var out []string
	var problems []Problem
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			problems = append(problems, Problem{File: p, Message: unwrapPathErr(err).Error(), Severity: SeverityError})
			continue
		}
		if !info.IsDir() {
			out = append(out, p)
			continue
		}
		_ = filepath.WalkDir(p, func(f string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() && f != p && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			if !d.IsDir() && IsTestFile(f) {
				out = append(out, f)
			}
			return nil
		})
	}
	sort.Strings(out)
	return out, problems
}

// RunTests runs every test file under paths. base supplies the options a
// test file does not set. Problems are files that could not be run.
func RunTests(ctx context.Context, paths []string, base Options) ([]TestResult, []Problem) {
	files, problems := FindTestFiles(paths)
	if len(files) == 0 && len(problems) == 0 {
		problems = append(problems, Problem{File: strings.Join(paths, " "), Message: "no policy test files (*_test.yaml) found", Severity: SeverityError})
	}
	var results []TestResult
	for _, f := range files {
		r, ps := runTestFile(ctx, f, base)
		results = append(results, r...)
		problems = append(problems, ps...)
	}
	return results, problems
}

func runTestFile(ctx context.Context, file string, base Options) ([]TestResult, []Problem) {
	var tf TestFile
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, []Problem{{File: file, Message: unwrapPathErr(err).Error(), Severity: SeverityError}}
	}
	src := &Sources{}
	var top yaml.Node
	if err := yaml.Unmarshal(data, &top); err != nil {
		return nil, []Problem{{File: file, Line: yamlErrLine(err), Message: "not valid YAML: " + trimYAMLErr(err), Severity: SeverityError}}
	}
	if len(top.Content) == 0 {
		return nil, []Problem{{File: file, Message: "empty test file", Severity: SeverityError}}
	}
	tsrc := source{file: file, lines: map[string]int{}}
	if !src.decodeStrict(file, top.Content[0], &tf, &tsrc) {
		return nil, src.Problems
	}
	if len(tf.Tests) == 0 {
		return nil, []Problem{{File: file, Message: "no tests: want a `tests:` list", Severity: SeverityError}}
	}
	dir := filepath.Dir(file)
	opts := base
	if tf.TrustDomain != "" {
		opts.TrustDomain = tf.TrustDomain
	}
	if tf.TrustDomainAliases != nil {
		opts.TrustDomainAliases = tf.TrustDomainAliases
	}
	if tf.RootNamespaces != nil {
		opts.RootNamespaces = tf.RootNamespaces
	}
	if tf.Query != "" {
		opts.RegoQuery = tf.Query
	}
	if tf.RegoVersion != "" {
		opts.RegoVersion = tf.RegoVersion
	}
	rel := func(ps []string) []string {
		out := make([]string, len(ps))
		for i, p := range ps {
			if filepath.IsAbs(p) {
				out[i] = p
			} else {
				out[i] = filepath.Join(dir, p)
			}
		}
		return out
	}
	policies := rel(tf.Policies)
	if len(policies) == 0 {
		policies = []string{dir}
	}
	set, probs := LoadAndCompile(ctx, policies, rel(tf.Data), opts)
	if set == nil {
		var errs []Problem
		for _, p := range probs {
			if p.Severity == SeverityError {
				errs = append(errs, p)
			}
		}
		return nil, append([]Problem{{File: file, Message: "policies do not compile", Severity: SeverityError}}, errs...)
	}
	var results []TestResult
	for i, tc := range tf.Tests {
		name := tc.Name
		if name == "" {
			name = fmt.Sprintf("tests[%d]", i)
		}
		r := TestResult{File: file, Name: name}
		r.Pass, r.Message, r.Decision = runCase(ctx, set, tc)
		if !r.Pass {
			r.Message = fmt.Sprintf("%s:%d: %s", file, tsrc.lineOf(fmt.Sprintf("tests[%d]", i)), r.Message)
		}
		results = append(results, r)
	}
	return results, nil
}

func runCase(ctx context.Context, set *Set, tc TestCase) (bool, string, *Decision) {
	if tc.MTLS != nil {
		want, err := ParseMTLSMode(tc.ExpectMode)
		if err != nil {
			return false, "expect_mode: " + err.Error(), nil
		}
		got := set.MTLS(tc.MTLS.Namespace, tc.MTLS.Labels, tc.MTLS.Port)
		if got.Mode != want {
			return false, fmt.Sprintf("expected mTLS mode %s, got %s (from %s %s)", want, got.Mode, got.Scope, orNone(got.Policy)), nil
		}
		return true, "", nil
	}
	if tc.Expect != "allow" && tc.Expect != "deny" {
		return false, fmt.Sprintf("expect %q: want allow or deny", tc.Expect), nil
	}
	raw, err := jsonCompatible(tc.Input)
	if err != nil {
		return false, "input: " + err.Error(), nil
	}
	if raw == nil {
		raw = map[string]any{}
	}
	js, err := json.Marshal(raw)
	if err != nil {
		return false, "input: " + err.Error(), nil
	}
	in, err := ParseInput(js)
	if err != nil {
		return false, err.Error(), nil
	}
	d := set.Explain(ctx, in)
	if d.Err != nil && !IsPathError(d.Err) {
		return false, "evaluation failed: " + d.Reason, &d
	}
	got := "deny"
	if d.Allow {
		got = "allow"
	}
	if got != tc.Expect {
		return false, fmt.Sprintf("expected %s, got %s: %s", tc.Expect, got, d.Reason), &d
	}
	if tc.Policy != nil && *tc.Policy != d.Policy {
		return false, fmt.Sprintf("expected the decision from policy %q, got %q: %s", *tc.Policy, d.Policy, d.Reason), &d
	}
	if tc.Rule != nil && *tc.Rule != d.Rule {
		return false, fmt.Sprintf("expected rule %d, got %d: %s", *tc.Rule, d.Rule, d.Reason), &d
	}
	if tc.Reason != "" && !strings.Contains(d.Reason, tc.Reason) {
		return false, fmt.Sprintf("expected the reason to contain %q, got %q", tc.Reason, d.Reason), &d
	}
	return true, "", &d
}

func orNone(s string) string {
	if s == "" {
		return "(no policy)"
	}
	return s
}
