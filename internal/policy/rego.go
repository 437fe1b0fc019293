package policy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// regoProgram is the embedded OPA: modules compiled once, the decision
// query prepared once, evaluated per request.
type regoProgram struct {
	query         string
	allow         rego.PreparedEvalQuery
	deny          *rego.PreparedEvalQuery // the package's `deny` set, for reasons
	denyQuery     string
	allowedReason string
}

// compileRego parses modules (Rego v1, or v0 as the seeds write it) and
// prepares query. version is "v1", "v0" or "auto" (v1, falling back to v0
// for a module that only parses as v0).
func compileRego(ctx context.Context, mods []RegoModule, data map[string]any, query, version string) (*regoProgram, []Problem) {
	var problems []Problem
	errorf := func(file string, line int, format string, a ...any) {
		problems = append(problems, Problem{File: file, Line: line, Message: fmt.Sprintf(format, a...), Severity: SeverityError})
	}
	switch version {
	case "auto", "v0", "v1":
	default:
		errorf("", 0, "rego version %q: want auto, v0 or v1", version)
		return nil, problems
	}
	var parsed []*ast.Module
	for _, m := range mods {
		mod, err := parseRego(m, version)
		if err != nil {
			problems = append(problems, regoProblems(m.File, err)...)
			continue
		}
		parsed = append(parsed, mod)
	}
	if len(problems) > 0 {
		return nil, problems
	}
	if _, err := ast.ParseBody(query); err != nil {
		errorf("", 0, "query %q is not valid Rego: %v", query, err)
		return nil, problems
	}
	if !queryDefined(parsed, query) {
		errorf("", 0, "query %s names no rule in the loaded Rego modules (packages: %s): set --query (e.g. %s)", query, strings.Join(packages(parsed), ", "), suggestQuery(parsed))
		return nil, problems
	}
	if data == nil {
		data = map[string]any{}
	}
	store := inmem.NewFromObject(data)
	opts := []func(*rego.Rego){rego.Store(store)}
	for _, m := range parsed {
		opts = append(opts, rego.ParsedModule(m))
	}
	p := &regoProgram{query: query, allowedReason: "allowed by Rego query " + query}
	var err error
	p.allow, err = rego.New(append(opts, rego.Query(query))...).PrepareForEval(ctx)
	if err != nil {
		return nil, regoProblems("", err)
	}
	if i := strings.LastIndexByte(query, '.'); i > 0 {
		dq := query[:i] + ".deny"
		if dq != query && queryDefined(parsed, dq) {
			q, err := rego.New(append(opts, rego.Query(dq))...).PrepareForEval(ctx)
			if err == nil {
				p.deny, p.denyQuery = &q, dq
			}
		}
	}
	return p, nil
}

func parseRego(m RegoModule, version string) (*ast.Module, error) {
	v := ast.RegoV1
	if version == "v0" {
		v = ast.RegoV0
	}
	mod, err := ast.ParseModuleWithOpts(m.File, m.Text, ast.ParserOptions{RegoVersion: v, ProcessAnnotation: true})
	if err != nil && version == "auto" {
		if mod0, err0 := ast.ParseModuleWithOpts(m.File, m.Text, ast.ParserOptions{RegoVersion: ast.RegoV0, ProcessAnnotation: true}); err0 == nil {
			return mod0, nil
		}
	}
	if err == nil && mod == nil {
		err = errors.New("empty module: a Rego file needs a package declaration")
	}
	return mod, err
}

// regoProblems turns OPA's located errors into Problems.
func regoProblems(file string, err error) []Problem {
	var errs ast.Errors
	if errors.As(err, &errs) {
		out := make([]Problem, 0, len(errs))
		for _, e := range errs {
			p := Problem{File: file, Message: e.Message, Severity: SeverityError}
			if e.Location != nil {
				p.File, p.Line = e.Location.File, e.Location.Row
			}
			out = append(out, p)
		}
		return out
	}
	return []Problem{{File: file, Message: err.Error(), Severity: SeverityError}}
}

// queryDefined reports whether a "data.pkg.rule" query names a rule (or a
// package) of the modules; other queries are assumed defined.
func queryDefined(mods []*ast.Module, query string) bool {
	if !strings.HasPrefix(query, "data.") || strings.ContainsAny(query, " [=(") {
		return true
	}
	for _, m := range mods {
		pkg := m.Package.Path.String()
		if query == pkg || strings.HasPrefix(pkg, query+".") {
			return true
		}
		for _, r := range m.Rules {
			name := pkg + "." + r.Head.Ref().GroundPrefix().String()
			if name == query || strings.HasPrefix(query, name+".") || strings.HasPrefix(name, query+".") {
				return true
			}
		}
	}
	return false
}

func packages(mods []*ast.Module) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range mods {
		p := m.Package.Path.String()
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func suggestQuery(mods []*ast.Module) string {
	for _, m := range mods {
		for _, r := range m.Rules {
			if r.Head.Ref().GroundPrefix().String() == "allow" {
				return "--query " + m.Package.Path.String() + ".allow"
			}
		}
	}
	return "--query data.<package>.allow"
}

// eval runs the decision query. Anything but `true` denies (undefined,
// false, a non-boolean, an error): the engine fails closed.
func (p *regoProgram) eval(ctx context.Context, a *attrs) (bool, string, error) {
	doc := a.regoDocument()
	rs, err := p.allow.Eval(ctx, rego.EvalInput(doc))
	if err != nil {
		return false, "Rego evaluation failed: " + err.Error(), err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return false, p.denied(ctx, doc, "Rego query "+p.query+" is undefined"), nil
	}
	v := rs[0].Expressions[0].Value
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Sprintf("Rego query %s returned %T, not a boolean", p.query, v), nil
	}
	if !b {
		return false, p.denied(ctx, doc, "Rego query "+p.query+" is false"), nil
	}
	return true, p.allowedReason, nil
}

// denied adds the package's deny messages, as the seeds' policies write
// them (deny[msg] { … }), to a denial reason.
func (p *regoProgram) denied(ctx context.Context, doc map[string]any, reason string) string {
	if p.deny == nil {
		return reason
	}
	rs, err := p.deny.Eval(ctx, rego.EvalInput(doc))
	if err != nil || len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return reason
	}
	var msgs []string
	switch t := rs[0].Expressions[0].Value.(type) {
	case []any:
		for _, e := range t {
			msgs = append(msgs, fmt.Sprint(e))
		}
	case string:
		msgs = append(msgs, t)
	case bool:
		return reason
	}
	if len(msgs) == 0 {
		return reason
	}
	sort.Strings(msgs)
	return reason + ": " + strings.Join(msgs, "; ")
}
