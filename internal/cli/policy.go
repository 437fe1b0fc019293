package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/trustmesh/trustmesh/internal/policy"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Evaluate, test and validate authorization policy offline",
		Long: `Work with policy files offline, exactly as proxies evaluate them:

  - Istio AuthorizationPolicy and PeerAuthentication YAML (security.istio.io/v1
    and v1beta1), unchanged; multi-document files and directories;
  - OPA Rego modules (v1, and v0 syntax as older policies write it), with data
    documents, acting as a CUSTOM authorizer ahead of DENY and ALLOW.

Order: CUSTOM (Rego) deny → DENY → allow if no ALLOW policy applies → allow
if any ALLOW matches → deny. See docs/policy.md.`,
		Example: `  trustmesh policy eval --policy examples/policies/matrix --trust-domain example.org --input request.json
  trustmesh policy test examples/policies
  trustmesh policy validate examples/policies`,
	}
	cmd.AddCommand(newPolicyEvalCmd(), newPolicyTestCmd(), newPolicyValidateCmd(), newPolicyMTLSCmd())
	return cmd
}

// policyFlags are the compile options every policy command shares.
type policyFlags struct {
	trustDomain    string
	aliases        []string
	rootNamespaces []string
	defaultNS      string
	query          string
	regoVersion    string
	data           []string
	defaultMTLS    string
}

func (f *policyFlags) register(cmd *cobra.Command, withData bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.trustDomain, "trust-domain", policy.DefaultTrustDomain, "local trust domain: principals in it, in an alias or in cluster.local match it")
	fl.StringSliceVar(&f.aliases, "trust-domain-alias", nil, "another trust domain that policies' principals also mean (repeatable)")
	fl.StringSliceVar(&f.rootNamespaces, "root-namespace", policy.DefaultRootNamespaces, "namespaces whose policies apply mesh-wide (repeatable)")
	fl.StringVar(&f.defaultNS, "default-namespace", policy.DefaultNamespace, "namespace of objects without metadata.namespace")
	fl.StringVar(&f.query, "query", policy.DefaultRegoQuery, "Rego decision query (must be true to allow)")
	fl.StringVar(&f.regoVersion, "rego-version", "auto", "Rego syntax: auto (v1, falling back to v0), v0 or v1")
	fl.StringVar(&f.defaultMTLS, "default-mtls", string(policy.MTLSStrict), "mTLS mode where no PeerAuthentication sets one: STRICT, PERMISSIVE or DISABLE")
	if withData {
		fl.StringSliceVar(&f.data, "data", nil, "JSON or YAML data document for Rego, merged at data's root (repeatable)")
	}
}

func (f *policyFlags) options(cmd *cobra.Command) (policy.Options, error) {
	m, err := policy.ParseMTLSMode(f.defaultMTLS)
	if err != nil {
		return policy.Options{}, usageErrorf(cmd, "--default-mtls: %v", err)
	}
	return policy.Options{
		TrustDomain:        f.trustDomain,
		TrustDomainAliases: f.aliases,
		RootNamespaces:     f.rootNamespaces,
		DefaultNamespace:   f.defaultNS,
		RegoQuery:          f.query,
		RegoVersion:        f.regoVersion,
		DefaultMTLS:        m,
	}, nil
}

// compile loads and compiles, printing warnings to stderr; errors come
// back as one error listing them all.
func (f *policyFlags) compile(cmd *cobra.Command, paths []string) (*policy.Set, error) {
	opts, err := f.options(cmd)
	if err != nil {
		return nil, err
	}
	set, problems := policy.LoadAndCompile(cmd.Context(), paths, f.data, opts)
	var errs []string
	for _, p := range problems {
		if p.Severity == policy.SeverityWarning {
			fmt.Fprintln(cmd.ErrOrStderr(), p.String())
		} else {
			errs = append(errs, p.String())
		}
	}
	if set == nil {
		return nil, fmt.Errorf("policies do not compile:\n  %s", strings.Join(errs, "\n  "))
	}
	return set, nil
}

// evalOutput is the JSON `policy eval` prints. Field names are stable.
type evalOutput struct {
	Allow    bool                  `json:"allow"`
	Decision string                `json:"decision"`
	Action   *string               `json:"action"`
	Policy   *string               `json:"policy"`
	Rule     *int                  `json:"rule"`
	Reason   string                `json:"reason"`
	DryRun   []policy.DryRunResult `json:"dry_run"`
	Audit    []string              `json:"audit"`
}

func decisionOutput(d policy.Decision) evalOutput {
	out := evalOutput{Allow: d.Allow, Decision: "DENY", Reason: d.Reason, DryRun: d.DryRun, Audit: d.Audit}
	if d.Allow {
		out.Decision = "ALLOW"
	}
	if a := d.Action.String(); a != "" {
		out.Action = &a
	}
	if d.Policy != "" {
		p := d.Policy
		out.Policy = &p
	}
	if d.Rule >= 0 {
		r := d.Rule
		out.Rule = &r
	}
	if out.DryRun == nil {
		out.DryRun = []policy.DryRunResult{}
	}
	if out.Audit == nil {
		out.Audit = []string{}
	}
	return out
}

func newPolicyEvalCmd() *cobra.Command {
	var pf policyFlags
	var paths []string
	var inputPath string
	cmd := &cobra.Command{
		Use:   "eval --policy PATH [--policy PATH…] --input FILE|-",
		Short: "Decide one request against policies and print the decision as JSON",
		Long: `Decide one request (or TCP connection) and print:

  {"allow": bool, "decision": "ALLOW"|"DENY", "action": "CUSTOM"|"DENY"|"ALLOW"|null,
   "policy": "ns/name"|null, "rule": int|null, "reason": "…", "dry_run": [...], "audit": [...]}

The input is JSON:

  {"source":      {"principal": "spiffe://…", "namespace": "…", "ip": "…"},
   "destination": {"principal": "spiffe://…", "namespace": "…", "labels": {…}, "port": N, "ip": "…"},
   "request":     {"method": "…", "path": "…", "host": "…", "headers": {…},
                   "auth": {"principal": "iss/sub", "audiences": […], "presenter": "…", "claims": {…}}},
   "connection":  {"mtls": bool, "sni": "…"}}

Omit "request" for a TCP connection. source.namespace defaults to what an
/ns/<ns>/sa/<sa> SPIFFE ID encodes; with "mtls": false the principal is
dropped (a plaintext caller has no verified identity). Other top-level fields
are passed to Rego unchanged.

Exits 0 with a decision, allowed or denied; non-zero only when it could not
evaluate (bad policy, bad input, a failing Rego evaluation).`,
		Example: `  echo '{"source":{"principal":"spiffe://cluster.local/ns/default/sa/frontend"},
        "destination":{"namespace":"default","labels":{"app":"api"},"port":8080},
        "request":{"method":"GET","path":"/api/users"}}' |
    trustmesh policy eval --policy examples/policies/matrix --input -

  # The seed's Rego policy, unchanged (Rego v0), as the only policy
  trustmesh policy eval --policy examples/policies/rego/authz.rego --query data.authz.allow --input in.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(paths) == 0 {
				return usageErrorf(cmd, "--policy is required")
			}
			if inputPath == "" {
				return usageErrorf(cmd, "--input is required (a file, or - for stdin)")
			}
			var r io.Reader = cmd.InOrStdin()
			if inputPath != "-" {
				f, err := os.Open(inputPath)
				if err != nil {
					return fmt.Errorf("read input: %w", err)
				}
				defer f.Close()
				r = f
			}
			in, err := policy.DecodeInput(r)
			if err != nil {
				return err
			}
			set, err := pf.compile(cmd, paths)
			if err != nil {
				return err
			}
			d := set.Explain(cmd.Context(), in)
			if d.Err != nil && !policy.IsPathError(d.Err) {
				return fmt.Errorf("could not evaluate: %s", d.Reason)
			}
			return printJSON(cmd.OutOrStdout(), decisionOutput(d))
		},
	}
	pf.register(cmd, true)
	cmd.Flags().StringArrayVar(&paths, "policy", nil, "policy file or directory (repeatable)")
	cmd.Flags().StringVar(&inputPath, "input", "", "input JSON file, or - for stdin")
	return cmd
}

func newPolicyTestCmd() *cobra.Command {
	var pf policyFlags
	var out outputFlag
	var verbose bool
	cmd := &cobra.Command{
		Use:   "test PATH…",
		Short: "Run policy test files (*_test.yaml) against the policies beside them",
		Long: `Run policy tests, as 'opa test' runs Rego tests. A test file is YAML named
*_test.yaml (or .yml); by default it tests the policies in its own directory:

  trust_domain: example.org        # optional; also query, rego_version,
  policies: [.]                    #   root_namespaces, trust_domain_aliases,
  data: [data.json]                #   policies and data (relative to the file)
  tests:
    - name: frontend may call the API
      input: {source: {principal: spiffe://example.org/ns/default/sa/frontend},
              destination: {namespace: default, labels: {app: api}},
              request: {method: GET, path: /}}
      expect: allow                # allow | deny
      policy: default/api-allow    # optional: the deciding policy, rule and
      rule: 0                      #   a substring of the reason
    - name: STRICT mTLS on the API
      mtls: {namespace: default, labels: {app: api}, port: 8080}
      expect_mode: STRICT

Exits non-zero when a test fails or a file cannot run.`,
		Example: `  trustmesh policy test examples/policies
  trustmesh policy test -v examples/policies/matrix/matrix_test.yaml`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf(cmd, "want at least one test file or directory")
			}
			return out.check(cmd)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := pf.options(cmd)
			if err != nil {
				return err
			}
			results, problems := policy.RunTests(cmd.Context(), args, opts)
			failed := 0
			for _, r := range results {
				if !r.Pass {
					failed++
				}
			}
			var errs []string
			for _, p := range problems {
				errs = append(errs, p.String())
			}
			if out.json() {
				type report struct {
					Results  []policy.TestResult `json:"results"`
					Passed   int                 `json:"passed"`
					Failed   int                 `json:"failed"`
					Problems []string            `json:"problems"`
				}
				rep := report{Results: results, Passed: len(results) - failed, Failed: failed, Problems: errs}
				if rep.Results == nil {
					rep.Results = []policy.TestResult{}
				}
				if rep.Problems == nil {
					rep.Problems = []string{}
				}
				if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				for _, r := range results {
					switch {
					case !r.Pass:
						fmt.Fprintf(w, "FAIL %s: %s\n     %s\n", r.File, r.Name, r.Message)
					case verbose:
						fmt.Fprintf(w, "PASS %s: %s\n", r.File, r.Name)
					}
				}
				for _, e := range errs {
					fmt.Fprintf(w, "ERROR %s\n", e)
				}
				fmt.Fprintf(w, "%s\nPASS: %d/%d\n", strings.Repeat("-", 40), len(results)-failed, len(results))
				if failed > 0 {
					fmt.Fprintf(w, "FAIL: %d/%d\n", failed, len(results))
				}
			}
			if failed > 0 || len(problems) > 0 {
				return errSilentFailure
			}
			return nil
		},
	}
	pf.register(cmd, false)
	out.register(cmd)
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "list passing tests too")
	return cmd
}

func newPolicyValidateCmd() *cobra.Command {
	var pf policyFlags
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "validate PATH…",
		Short: "Check policy files and report every problem with file and line",
		Long: `Load and compile policy files and directories (AuthorizationPolicy,
PeerAuthentication, Rego, data documents) and report every error and warning
as file:line: field: message. Exits non-zero if any error is found.`,
		Example: `  trustmesh policy validate examples/policies
  trustmesh policy validate -o json ./policies`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf(cmd, "want at least one policy file or directory")
			}
			return out.check(cmd)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := pf.options(cmd)
			if err != nil {
				return err
			}
			src := policy.Load(args...)
			for _, f := range pf.data {
				src.LoadData(f)
			}
			nAuthz, nPeer, nRego := len(src.AuthorizationPolicies), len(src.PeerAuthentications), len(src.RegoModules)
			set, problems := policy.Compile(cmd.Context(), src, opts)
			nErr := 0
			for _, p := range problems {
				if p.Severity == policy.SeverityError {
					nErr++
				}
			}
			if out.json() {
				type report struct {
					Valid                 bool             `json:"valid"`
					AuthorizationPolicies int              `json:"authorization_policies"`
					PeerAuthentications   int              `json:"peer_authentications"`
					RegoModules           int              `json:"rego_modules"`
					SkippedKinds          map[string]int   `json:"skipped_kinds"`
					Problems              []policy.Problem `json:"problems"`
				}
				rep := report{Valid: set != nil, AuthorizationPolicies: nAuthz, PeerAuthentications: nPeer, RegoModules: nRego, SkippedKinds: src.SkippedKinds, Problems: problems}
				if rep.Problems == nil {
					rep.Problems = []policy.Problem{}
				}
				if rep.SkippedKinds == nil {
					rep.SkippedKinds = map[string]int{}
				}
				if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				for _, p := range problems {
					fmt.Fprintln(w, p.String())
				}
				var skipped []string
				for k, n := range src.SkippedKinds {
					skipped = append(skipped, fmt.Sprintf("%s ×%d", k, n))
				}
				sort.Strings(skipped)
				summary := fmt.Sprintf("%d AuthorizationPolicies, %d PeerAuthentications, %d Rego modules", nAuthz, nPeer, nRego)
				if len(skipped) > 0 {
					summary += "; ignored other kinds: " + strings.Join(skipped, ", ")
				}
				if set != nil {
					fmt.Fprintf(w, "valid: %s\n", summary)
				} else {
					fmt.Fprintf(w, "invalid: %d %s in %s\n", nErr, map[bool]string{true: "error", false: "errors"}[nErr == 1], summary)
				}
			}
			if set == nil {
				return errSilentFailure
			}
			return nil
		},
	}
	pf.register(cmd, true)
	out.register(cmd)
	return cmd
}

func newPolicyMTLSCmd() *cobra.Command {
	var pf policyFlags
	var paths, labels []string
	var namespace string
	var port uint32
	cmd := &cobra.Command{
		Use:   "mtls --policy PATH --namespace NS [--label k=v…] --port N",
		Short: "Say which mTLS mode PeerAuthentication sets on a workload port",
		Long: `Resolve PeerAuthentication for one workload port: a workload policy
(port-level, then its own mode) over the namespace's over the mesh's (root
namespaces), each UNSET inheriting from the next; the default applies where
none sets a mode. Prints JSON {"mode", "policy", "scope", "plaintext_allowed"}.`,
		Example: `  trustmesh policy mtls --policy examples/policies --namespace production --label app=api --port 8080`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(paths) == 0 {
				return usageErrorf(cmd, "--policy is required")
			}
			lm, err := parseLabels(cmd, labels)
			if err != nil {
				return err
			}
			set, err := pf.compile(cmd, paths)
			if err != nil {
				return err
			}
			d := set.MTLS(namespace, lm, port)
			return printJSON(cmd.OutOrStdout(), struct {
				policy.MTLSDecision
				PlaintextAllowed bool `json:"plaintext_allowed"`
			}{d, d.Mode.AllowsPlaintext()})
		},
	}
	pf.register(cmd, false)
	cmd.Flags().StringArrayVar(&paths, "policy", nil, "policy file or directory (repeatable)")
	cmd.Flags().StringVar(&namespace, "namespace", policy.DefaultNamespace, "the workload's namespace")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "a workload label k=v (repeatable)")
	cmd.Flags().Uint32Var(&port, "port", 0, "the workload port")
	return cmd
}

// parseLabels parses k=v flags.
func parseLabels(cmd *cobra.Command, kvs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageErrorf(cmd, "label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

// errSilentFailure makes a command exit 1 after it has printed its own
// report.
var errSilentFailure = errors.New("")
