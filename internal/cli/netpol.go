package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/trustmesh/trustmesh/internal/netpol"
)

func newNetpolCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "netpol",
		Short: "Analyze, explain, lint and generate Kubernetes NetworkPolicies offline",
		Long: `Work with Kubernetes NetworkPolicy (networking.k8s.io/v1) offline, from the
YAML you already have: a dump (kubectl get ns,pods,networkpolicies -A -o yaml)
or a Git repository of manifests, where Deployments, StatefulSets, DaemonSets,
ReplicaSets, ReplicationControllers, Jobs and CronJobs stand for the pods
their templates make.

Semantics are the Kubernetes API's: policyTypes defaulting, empty selectors,
namespaceSelector AND podSelector in one peer, OR across peers, ipBlock
except, endPort, named ports resolved on the destination pod, TCP/UDP/SCTP,
the union of the policies selecting a pod, and a connection allowed only if
the source's egress AND the destination's ingress allow it. See
docs/netpol.md.

Input (-f, repeatable): files, directories (recursive; files that hold no
Kubernetes objects are skipped), or - for stdin; multi-document YAML, JSON,
kind: List and typed lists. Unknown fields are warnings, as kubectl's are;
malformed objects are errors with file and document.`,
		Example: `  kubectl get ns,pods,networkpolicies -A -o yaml > cluster.yaml
  trustmesh netpol matrix -f cluster.yaml --port 8080
  trustmesh netpol check -f cluster.yaml --from default/frontend --to default/api --port 8080
  trustmesh netpol explain -f k8s/ --from default/frontend --to default/api --port http
  trustmesh netpol lint -f k8s/ --fail-on warning
  trustmesh netpol generate --graph services.yaml > policies.yaml
  trustmesh netpol diff -f cluster.yaml --against cluster.yaml --against new-policies/`,
	}
	cmd.AddCommand(newNetpolCheckCmd(), newNetpolMatrixCmd(), newNetpolExplainCmd(), newNetpolLintCmd(), newNetpolGenerateCmd(), newNetpolDiffCmd())
	return cmd
}

// netpolInput is the input flags every netpol command shares.
type netpolInput struct {
	paths     []string
	defaultNS string
}

func (in *netpolInput) register(cmd *cobra.Command, name, usage string) {
	if name == "filename" {
		cmd.Flags().StringArrayVarP(&in.paths, "filename", "f", nil, usage)
	} else {
		cmd.Flags().StringArrayVar(&in.paths, name, nil, usage)
	}
	if cmd.Flags().Lookup("default-namespace") == nil {
		cmd.Flags().StringVar(&in.defaultNS, "default-namespace", netpol.DefaultNamespace, "namespace of objects without metadata.namespace")
	}
}

// load reads the input, printing warnings to stderr; errors stop the
// command (analyzing without the objects they concern would mislead).
func (in *netpolInput) load(cmd *cobra.Command, flag string) (*netpol.Cluster, error) {
	if len(in.paths) == 0 {
		return nil, usageErrorf(cmd, "--%s is required (a file, a directory, or - for stdin)", flag)
	}
	c := netpol.Load(netpol.LoadOptions{DefaultNamespace: in.defaultNS, Stdin: cmd.InOrStdin()}, in.paths...)
	for _, p := range c.Warnings() {
		fmt.Fprintln(cmd.ErrOrStderr(), p.String())
	}
	if err := c.Err(); err != nil {
		return nil, err
	}
	return c, nil
}

// trafficFlags are --port and --protocol.
type trafficFlags struct {
	port     string
	protocol string
}

func (t *trafficFlags) register(cmd *cobra.Command, required bool) {
	usage := "destination port: a number, or a name the destination pod declares"
	if !required {
		usage = "decide this port only (default: every port; cells list the allowed ports)"
	}
	cmd.Flags().StringVar(&t.port, "port", "", usage)
	cmd.Flags().StringVar(&t.protocol, "protocol", "TCP", "TCP, UDP or SCTP")
}

func (t *trafficFlags) proto(cmd *cobra.Command) (netpol.Protocol, error) {
	p, err := netpol.ParseProtocol(t.protocol)
	if err != nil {
		return 0, usageErrorf(cmd, "--protocol: %v", err)
	}
	return p, nil
}

// number parses a numeric --port (0 when unset).
func (t *trafficFlags) number(cmd *cobra.Command) (int32, error) {
	if t.port == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(t.port)
	if err != nil {
		return 0, usageErrorf(cmd, "--port %q: want a number", t.port)
	}
	if n < 1 || n > 65535 {
		return 0, usageErrorf(cmd, "--port %d: must be between 1 and 65535", n)
	}
	return int32(n), nil
}

// connFlags are what check and explain share.
type connFlags struct {
	in       netpolInput
	traffic  trafficFlags
	from, to string
	output   string
}

func (f *connFlags) register(cmd *cobra.Command) {
	f.in.register(cmd, "filename", "manifest file or directory, or - for stdin (repeatable)")
	f.traffic.register(cmd, true)
	cmd.Flags().StringVar(&f.from, "from", "", "source: NS/NAME (a Pod or workload), NS/KIND/NAME, or an IP address outside the cluster")
	cmd.Flags().StringVar(&f.to, "to", "", "destination: NS/NAME, NS/KIND/NAME, or an IP address outside the cluster")
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
}

// verdict loads the input and decides the connection.
func (f *connFlags) verdict(cmd *cobra.Command) (*netpol.Analyzer, *netpol.Verdict, error) {
	if f.output != "table" && f.output != "json" {
		return nil, nil, usageErrorf(cmd, "unknown output format %q: want table or json", f.output)
	}
	if f.from == "" || f.to == "" || f.traffic.port == "" {
		return nil, nil, usageErrorf(cmd, "--from, --to and --port are required")
	}
	proto, err := f.traffic.proto(cmd)
	if err != nil {
		return nil, nil, err
	}
	if _, err := strconv.Atoi(f.traffic.port); err == nil {
		if _, err := f.traffic.number(cmd); err != nil {
			return nil, nil, err
		}
	}
	c, err := f.in.load(cmd, "filename")
	if err != nil {
		return nil, nil, err
	}
	a := netpol.NewAnalyzer(c)
	from, err := a.Resolve(f.from)
	if err != nil {
		return nil, nil, fmt.Errorf("--from %v", err)
	}
	to, err := a.Resolve(f.to)
	if err != nil {
		return nil, nil, fmt.Errorf("--to %v", err)
	}
	var port int32
	if n, err := strconv.Atoi(f.traffic.port); err == nil {
		port = int32(n)
	} else if port, err = a.ResolvePort(to, proto, f.traffic.port); err != nil {
		return nil, nil, fmt.Errorf("--port %v", err)
	}
	v := a.Check(from, to, proto, port)
	return a, &v, nil
}

// JSON shapes of check and explain. Field names are stable: external
// checks read them.
type npEndpointJSON struct {
	Name      string            `json:"name,omitempty"` // ns/name
	Kind      string            `json:"kind,omitempty"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	IP        string            `json:"ip,omitempty"`
}

type npRuleJSON struct {
	Policy  string `json:"policy"`
	Rule    int    `json:"rule"`
	Matched bool   `json:"matched"`
	Peer    string `json:"peer"`
	Ports   string `json:"ports"`
}

type npSideJSON struct {
	Allowed   bool             `json:"allowed"`
	Isolated  bool             `json:"isolated"`
	Exempt    string           `json:"exempt,omitempty"`
	Policies  []string         `json:"policies"`
	AllowedBy []netpol.RuleRef `json:"allowed_by"`
	Rules     []npRuleJSON     `json:"rules,omitempty"`
	Reason    string           `json:"reason"`
}

type npCheckJSON struct {
	Allowed  bool           `json:"allowed"`
	From     npEndpointJSON `json:"from"`
	To       npEndpointJSON `json:"to"`
	Protocol string         `json:"protocol"`
	Port     int32          `json:"port"`
	Egress   npSideJSON     `json:"egress"`
	Ingress  npSideJSON     `json:"ingress"`
	Reason   string         `json:"reason"`
}

func endpointJSON(e netpol.Endpoint) npEndpointJSON {
	if e.Pod == nil {
		return npEndpointJSON{IP: e.IP.String()}
	}
	return npEndpointJSON{Name: e.Pod.ID(), Kind: e.Pod.Kind, Namespace: e.Pod.Namespace, Labels: e.Pod.Labels}
}

func sideJSON(s netpol.Side, rules bool) npSideJSON {
	out := npSideJSON{Allowed: s.Allowed, Isolated: s.Isolated, Exempt: s.Exempt, Policies: s.Policies, AllowedBy: s.AllowedBy, Reason: s.Reason}
	if out.Policies == nil {
		out.Policies = []string{}
	}
	if out.AllowedBy == nil {
		out.AllowedBy = []netpol.RuleRef{}
	}
	if rules {
		for _, pe := range s.Evaluated {
			for _, r := range pe.Rules {
				out.Rules = append(out.Rules, npRuleJSON{Policy: pe.Policy, Rule: r.Index, Matched: r.Matched, Peer: r.Peer, Ports: r.Ports})
			}
		}
	}
	return out
}

func verdictJSON(v *netpol.Verdict, rules bool) npCheckJSON {
	return npCheckJSON{Allowed: v.Allowed, From: endpointJSON(v.From), To: endpointJSON(v.To), Protocol: v.Protocol.String(), Port: v.Port,
		Egress: sideJSON(v.Egress, rules), Ingress: sideJSON(v.Ingress, rules), Reason: v.Reason}
}

func newNetpolCheckCmd() *cobra.Command {
	var f connFlags
	cmd := &cobra.Command{
		Use:   "check -f PATH… --from NS/POD --to NS/POD --port N [--protocol TCP|UDP|SCTP]",
		Short: "Decide whether one connection is allowed, and by which policies",
		Long: `Decide one connection: allowed only if the source's egress AND the
destination's ingress allow it. -o json prints (field names are stable):

  {"allowed": bool,
   "egress":  {"allowed": bool, "isolated": bool, "policies": ["ns/name", …],
               "allowed_by": [{"policy": "ns/name", "rule": 0}], "reason": "…"},
   "ingress": {…}, "from": {…}, "to": {…}, "protocol": "TCP", "port": 8080,
   "reason": "…"}

"policies" are the policies that isolate that side (select the pod for that
direction); "exempt" says why none decides it (self, node, host-network,
external). NS/NAME names a Pod or a workload; when both share a name, pick
one as NS/KIND/NAME. --from or --to may be an IP address outside the
cluster (an address a pod in the input has means that pod). --port may be a
port name the destination pod declares.

Exits 0 with a decision, allowed or denied; non-zero when it could not
decide (bad input, unknown pod).`,
		Example: `  trustmesh netpol check -f examples/netpol/seed-default-deny-then-allow --from default/frontend --to default/api --port 8080
  trustmesh netpol check -f cluster.yaml --from default/api --to 8.8.8.8 --port 53 --protocol UDP -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, v, err := f.verdict(cmd)
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), verdictJSON(v, false))
			}
			w := cmd.OutOrStdout()
			word := "DENIED"
			if v.Allowed {
				word = "ALLOWED"
			}
			fmt.Fprintf(w, "%s: %s → %s on %s %d\n", word, v.From, v.To, v.Protocol, v.Port)
			return details(w, "egress", sideLine(v.Egress), "ingress", sideLine(v.Ingress))
		},
	}
	f.register(cmd)
	return cmd
}

func sideLine(s netpol.Side) string {
	word := "denied"
	if s.Allowed {
		word = "allowed"
	}
	r := strings.TrimPrefix(strings.TrimPrefix(s.Reason, "egress: "), "ingress: ")
	if strings.HasPrefix(r, word) {
		return r
	}
	return word + ": " + r
}

func newNetpolExplainCmd() *cobra.Command {
	var f connFlags
	cmd := &cobra.Command{
		Use:   "explain -f PATH… --from NS/POD --to NS/POD --port N [--protocol P]",
		Short: "Say in plain words why a connection is allowed or denied",
		Long: `Explain one connection side by side: for the source's egress and the
destination's ingress, whether the pod is isolated and by which policies,
every rule of those policies with the peer and port that matched or why
none did, the namespace's policies that do not select the pod (with the
label they require), and rules a policy's policyTypes make it ignore.
-o json is check's JSON with every evaluated rule under "rules".`,
		Example: `  trustmesh netpol explain -f examples/netpol/seed-default-deny-then-allow --from production/frontend --to production/api --port http
  trustmesh netpol explain -f cluster.yaml --from prod/web --to prod/db --port postgres -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, v, err := f.verdict(cmd)
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), verdictJSON(v, true))
			}
			_, err = io.WriteString(cmd.OutOrStdout(), v.Explain(a))
			return err
		},
	}
	f.register(cmd)
	return cmd
}

func newNetpolMatrixCmd() *cobra.Command {
	var in netpolInput
	var traffic trafficFlags
	var output string
	var ips, namespaces []string
	cmd := &cobra.Command{
		Use:   "matrix -f PATH… [--port N] [--protocol P] [-o table|json|csv|dot]",
		Short: "Print the pod × pod reachability matrix",
		Long: `Decide every pod pair (workloads standing for their pods). With --port,
each cell says whether that port is allowed; without it, each cell is the
set of ports allowed ("all", "none", or such as "TCP:80,8000-8100 UDP:53").

Formats:
  table  a grid, rows FROM and columns TO (✓ allowed, ✗ denied)
  json   {"port": N|null, "protocol": "TCP"|null, "endpoints": ["ns/name", …],
          "allowed": [[bool, …], …], "ports": [["…", …], …] (without --port)}
          allowed[i][j] is endpoints[i] → endpoints[j]
  csv    from,to,allowed,ports — one line per pair
  dot    a Graphviz digraph of the allowed pairs, one cluster per namespace

--ip adds an address outside the cluster as a row and a column;
--namespace prints only those namespaces' pods (all are still evaluated).`,
		Example: `  trustmesh netpol matrix -f cluster.yaml --port 80
  trustmesh netpol matrix -f k8s/ -o csv > reach.csv
  trustmesh netpol matrix -f k8s/ --namespace production -o dot | dot -Tsvg > reach.svg
  trustmesh netpol matrix -f k8s/ --port 443 --ip 0.0.0.0`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "table", "json", "csv", "dot":
			default:
				return usageErrorf(cmd, "unknown output format %q: want table, json, csv or dot", output)
			}
			proto, err := traffic.proto(cmd)
			if err != nil {
				return err
			}
			port, err := traffic.number(cmd)
			if err != nil {
				return err
			}
			var extra []netip.Addr
			for _, s := range ips {
				ip, err := netip.ParseAddr(s)
				if err != nil {
					return usageErrorf(cmd, "--ip %q: not an IP address", s)
				}
				extra = append(extra, ip)
			}
			c, err := in.load(cmd, "filename")
			if err != nil {
				return err
			}
			a := netpol.NewAnalyzer(c)
			m := a.Matrix(netpol.MatrixOptions{Port: port, Protocol: proto, IPs: extra})
			keep := matrixFilter(m, namespaces)
			w := bufio.NewWriterSize(cmd.OutOrStdout(), 1<<16)
			switch output {
			case "json":
				err = writeMatrixJSON(w, m, keep)
			case "csv":
				err = writeMatrixCSV(w, m, keep)
			case "dot":
				err = writeMatrixDot(w, m, keep)
			default:
				err = writeMatrixTable(w, m, keep)
			}
			if err != nil {
				return err
			}
			return w.Flush()
		},
	}
	in.register(cmd, "filename", "manifest file or directory, or - for stdin (repeatable)")
	traffic.register(cmd, false)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json, csv or dot")
	cmd.Flags().StringArrayVar(&ips, "ip", nil, "an address outside the cluster to add as a row and column (repeatable)")
	cmd.Flags().StringArrayVarP(&namespaces, "namespace", "n", nil, "print only the pods of this namespace (repeatable)")
	return cmd
}

// matrixFilter returns the indexes of the endpoints to print.
func matrixFilter(m *netpol.Matrix, namespaces []string) []int {
	want := map[string]bool{}
	for _, ns := range namespaces {
		want[ns] = true
	}
	var keep []int
	for i, e := range m.Endpoints {
		if len(want) == 0 || e.Pod == nil || want[e.Pod.Namespace] {
			keep = append(keep, i)
		}
	}
	return keep
}

func cellText(m *netpol.Matrix, i, j int) string {
	if m.Port != 0 {
		if m.Allowed(i, j) {
			return "✓"
		}
		return "✗"
	}
	return m.PortsText(i, j)
}

func writeMatrixTable(w io.Writer, m *netpol.Matrix, keep []int) error {
	if len(keep) == 0 {
		_, err := fmt.Fprintln(w, "no pods in the input")
		return err
	}
	if m.Port != 0 {
		fmt.Fprintf(w, "%s %d (✓ allowed, ✗ denied; rows FROM, columns TO)\n", m.Protocol, m.Port)
	} else {
		fmt.Fprintln(w, "allowed ports (rows FROM, columns TO)")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "FROM \\ TO")
	for _, j := range keep {
		fmt.Fprintf(tw, "\t%s", m.Endpoints[j])
	}
	fmt.Fprintln(tw)
	for _, i := range keep {
		fmt.Fprint(tw, m.Endpoints[i].String())
		for _, j := range keep {
			fmt.Fprintf(tw, "\t%s", cellText(m, i, j))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// writeMatrixJSON streams the matrix: a million cells do not need a
// million values in memory twice.
func writeMatrixJSON(w *bufio.Writer, m *netpol.Matrix, keep []int) error {
	quoted := map[string][]byte{} // cells repeat a few port sets
	str := func(s string) {
		b, ok := quoted[s]
		if !ok {
			b, _ = json.Marshal(s)
			quoted[s] = b
		}
		w.Write(b)
	}
	w.WriteString("{\n  \"port\": ")
	if m.Port != 0 {
		fmt.Fprintf(w, "%d,\n  \"protocol\": %q,\n", m.Port, m.Protocol.String())
	} else {
		w.WriteString("null,\n  \"protocol\": null,\n")
	}
	w.WriteString("  \"endpoints\": [")
	for k, i := range keep {
		if k > 0 {
			w.WriteString(", ")
		}
		str(m.Endpoints[i].String())
	}
	w.WriteString("],\n  \"allowed\": [")
	for k, i := range keep {
		if k > 0 {
			w.WriteByte(',')
		}
		w.WriteString("\n    [")
		for l, j := range keep {
			if l > 0 {
				w.WriteByte(',')
			}
			if m.Allowed(i, j) {
				w.WriteString("true")
			} else {
				w.WriteString("false")
			}
		}
		w.WriteByte(']')
	}
	w.WriteString("\n  ]")
	if m.Port == 0 {
		w.WriteString(",\n  \"ports\": [")
		for k, i := range keep {
			if k > 0 {
				w.WriteByte(',')
			}
			w.WriteString("\n    [")
			for l, j := range keep {
				if l > 0 {
					w.WriteByte(',')
				}
				str(m.PortsText(i, j))
			}
			w.WriteByte(']')
		}
		w.WriteString("\n  ]")
	}
	_, err := w.WriteString("\n}\n")
	return err
}

func writeMatrixCSV(w *bufio.Writer, m *netpol.Matrix, keep []int) error {
	w.WriteString("from,to,allowed,ports\n")
	for _, i := range keep {
		from := m.Endpoints[i].String()
		for _, j := range keep {
			w.WriteString(from)
			w.WriteByte(',')
			w.WriteString(m.Endpoints[j].String())
			if m.Allowed(i, j) {
				w.WriteString(",true,")
			} else {
				w.WriteString(",false,")
			}
			w.WriteString(m.PortsText(i, j))
			w.WriteByte('\n')
		}
	}
	return nil
}

func writeMatrixDot(w *bufio.Writer, m *netpol.Matrix, keep []int) error {
	w.WriteString("digraph netpol {\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n")
	byNS := map[string][]string{}
	var nss []string
	for _, i := range keep {
		e := m.Endpoints[i]
		ns := "(outside the cluster)"
		if e.Pod != nil {
			ns = e.Pod.Namespace
		}
		if byNS[ns] == nil {
			nss = append(nss, ns)
		}
		byNS[ns] = append(byNS[ns], e.String())
	}
	sort.Strings(nss)
	for k, ns := range nss {
		fmt.Fprintf(w, "  subgraph cluster_%d {\n    label=%q;\n", k, ns)
		for _, n := range byNS[ns] {
			fmt.Fprintf(w, "    %q;\n", n)
		}
		w.WriteString("  }\n")
	}
	for _, i := range keep {
		for _, j := range keep {
			if i == j || !m.Allowed(i, j) {
				continue
			}
			fmt.Fprintf(w, "  %q -> %q", m.Endpoints[i].String(), m.Endpoints[j].String())
			if m.Port == 0 {
				if ps := m.PortsText(i, j); ps != "all" {
					fmt.Fprintf(w, " [label=%q]", ps)
				}
			}
			w.WriteString(";\n")
		}
	}
	_, err := w.WriteString("}\n")
	return err
}

func newNetpolLintCmd() *cobra.Command {
	var in netpolInput
	var output, failOn, sensitive, dnsNS string
	var exclude, dnsLabels []string
	cmd := &cobra.Command{
		Use:   "lint -f PATH… [--fail-on warning|error] [-o table|json]",
		Short: "Find NetworkPolicy mistakes: missing default deny, blocked DNS, rules that never match",
		Long: `Check policies for what goes wrong in practice. Rules and severities:

  error    invalid-object          an object the API server would refuse (or that does not decode)
  error    ignored-rules           ingress/egress rules whose direction policyTypes leaves out
  error    unsatisfiable-selector  a selector no labels can match (app=a with app notin (a))
  error    except-covers-cidr      ipBlock excepts that cover the whole cidr
  error    dns-blocked (UDP)       egress isolation that blocks DNS lookups (UDP 53)
  warning  dns-blocked (TCP)       … that blocks DNS over TCP 53 (large answers)
  warning  no-default-deny-ingress a namespace with pods and no podSelector: {} ingress policy
  warning  selects-no-pod          a policy selecting none of its namespace's pods
  warning  peer-matches-nothing    a peer no pod or namespace in the input matches
  warning  named-port-undeclared   a named port no destination pod declares
  warning  broad-peer              namespaceSelector: {}, 0.0.0.0/0 or no from, on ingress to a sensitive port
  warning  duplicate-policy        two policies of a namespace with the same meaning
  info     no-default-deny-egress  a namespace with pods and no podSelector: {} egress policy
  info     port-without-protocol   a port entry relying on the TCP default
  warning  peers-ored              a namespaceSelector peer that makes a podSelector peer beside it moot
  info     peers-ored              a podSelector peer and a namespaceSelector peer, ORed (AND needs one peer)
  warning  (input)                 unknown fields and other input warnings

DNS is checked against the pods labelled k8s-app=kube-dns in kube-system
(--dns-namespace, --dns-label), or a stand-in with those labels when the
input has none. Sensitive ports default to well-known database, cache,
queue, secrets and control-plane ports (--sensitive-ports replaces them).

Exits 1 when a finding is at least --fail-on (default error), for CI.`,
		Example: `  trustmesh netpol lint -f k8s/
  trustmesh netpol lint -f cluster.yaml --fail-on warning -o json
  trustmesh netpol lint -f k8s/ --exclude-namespace kube-system --sensitive-ports 5432,6379,8000-8100`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageErrorf(cmd, "unknown output format %q: want table or json", output)
			}
			min, err := netpol.ParseSeverity(failOn)
			if err != nil || min == netpol.SeverityInfo {
				return usageErrorf(cmd, "--fail-on %q: want warning or error", failOn)
			}
			opts := netpol.LintOptions{ExcludeNamespaces: exclude, DNSNamespace: dnsNS}
			if sensitive != "" {
				if opts.SensitivePorts, err = parsePortList(sensitive); err != nil {
					return usageErrorf(cmd, "--sensitive-ports: %v", err)
				}
			}
			if len(dnsLabels) > 0 {
				if opts.DNSLabels, err = parseLabels(cmd, dnsLabels); err != nil {
					return err
				}
			}
			if len(in.paths) == 0 {
				return usageErrorf(cmd, "--filename is required (a file, a directory, or - for stdin)")
			}
			c := netpol.Load(netpol.LoadOptions{DefaultNamespace: in.defaultNS, Stdin: cmd.InOrStdin()}, in.paths...)
			var findings []netpol.Finding
			for _, p := range c.Problems {
				src := p.Source
				rule := "invalid-object"
				if p.Severity != netpol.SeverityError {
					rule = "input"
				}
				findings = append(findings, netpol.Finding{Severity: p.Severity, Rule: rule, Object: p.Object, Field: p.Field, Source: &src, Message: p.Message})
			}
			findings = append(findings, netpol.NewAnalyzer(c).Lint(opts)...)
			counts := map[netpol.Severity]int{}
			fail := false
			for _, f := range findings {
				counts[f.Severity]++
				fail = fail || f.Severity.AtLeast(min)
			}
			if output == "json" {
				if findings == nil {
					findings = []netpol.Finding{}
				}
				ignored := c.Ignored
				if ignored == nil {
					ignored = map[string]int{}
				}
				if err := printJSON(cmd.OutOrStdout(), struct {
					Findings   []netpol.Finding `json:"findings"`
					Errors     int              `json:"errors"`
					Warnings   int              `json:"warnings"`
					Infos      int              `json:"infos"`
					Pass       bool             `json:"pass"`
					Namespaces int              `json:"namespaces"`
					Pods       int              `json:"pods"`
					Policies   int              `json:"policies"`
					Ignored    map[string]int   `json:"ignored_kinds"`
				}{findings, counts[netpol.SeverityError], counts[netpol.SeverityWarning], counts[netpol.SeverityInfo], !fail,
					len(c.Namespaces), len(c.Pods), len(c.Policies), ignored}); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				for _, f := range findings {
					fmt.Fprintln(w, f.String())
				}
				fmt.Fprintf(w, "%d %s, %d %s, %d info (%s)\n",
					counts[netpol.SeverityError], map[bool]string{true: "error", false: "errors"}[counts[netpol.SeverityError] == 1],
					counts[netpol.SeverityWarning], map[bool]string{true: "warning", false: "warnings"}[counts[netpol.SeverityWarning] == 1],
					counts[netpol.SeverityInfo], inputSummary(c))
			}
			if fail {
				return errSilentFailure
			}
			return nil
		},
	}
	in.register(cmd, "filename", "manifest file or directory, or - for stdin (repeatable)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().StringVar(&failOn, "fail-on", "error", "exit 1 on findings at least this severe: warning or error")
	cmd.Flags().StringVar(&sensitive, "sensitive-ports", "", "TCP ports broad-peer flags, such as 5432,6379,8000-8100 (replaces the defaults)")
	cmd.Flags().StringArrayVar(&exclude, "exclude-namespace", nil, "namespace not checked for default deny and DNS (repeatable)")
	cmd.Flags().StringVar(&dnsNS, "dns-namespace", "kube-system", "namespace of the cluster DNS pods")
	cmd.Flags().StringArrayVar(&dnsLabels, "dns-label", nil, "a label k=v of the cluster DNS pods (repeatable; default k8s-app=kube-dns)")
	return cmd
}

// inputSummary says what was read: counts, ignored kinds, skipped files.
func inputSummary(c *netpol.Cluster) string {
	n := func(k int, one, many string) string {
		if k == 1 {
			return "1 " + one
		}
		return fmt.Sprintf("%d %s", k, many)
	}
	s := n(len(c.Namespaces), "namespace", "namespaces") + ", " + n(len(c.Pods), "pod or workload", "pods and workloads") + ", " + n(len(c.Policies), "policy", "policies")
	var ignored []string
	for k, n := range c.Ignored {
		ignored = append(ignored, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(ignored)
	if len(ignored) > 0 {
		s += "; ignored other kinds: " + strings.Join(ignored, ", ")
	}
	if c.Finished > 0 {
		s += "; " + n(c.Finished, "finished pod", "finished pods") + " skipped"
	}
	if len(c.SkippedFiles) > 0 {
		s += "; " + n(len(c.SkippedFiles), "file", "files") + " without Kubernetes objects skipped"
	}
	return s
}

// parsePortList reads "5432,6379,8000-8100".
func parsePortList(s string) (map[int32]string, error) {
	out := map[int32]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b {
			return nil, fmt.Errorf("%q: want a port or a range such as 8000-8100 within 1-65535", part)
		}
		if b-a > 65535 {
			return nil, fmt.Errorf("%q: range too large", part)
		}
		for p := a; p <= b; p++ {
			out[int32(p)] = "listed"
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no ports")
	}
	return out, nil
}

func newNetpolGenerateCmd() *cobra.Command {
	var in netpolInput
	var graphFile, auditFile, trustDomain, output string
	var noIstio, printGraph bool
	cmd := &cobra.Command{
		Use:   "generate (--graph FILE | --from-audit FILE [-f PATH…]) [-o yaml|json]",
		Short: "Generate least-privilege NetworkPolicies and AuthorizationPolicies from a service graph",
		Long: `Turn a declared service graph into policies that allow exactly its edges:
per namespace a default-deny NetworkPolicy (ingress and egress) and DNS
egress (UDP and TCP 53 to kube-system k8s-app=kube-dns), and for each edge
an ingress policy on the callee and an egress policy on the caller, each
naming the other by labels (and namespace) on the edge's ports. Matching
Istio AuthorizationPolicies follow: allow-nothing per namespace, and per
callee its callers' principals (<trust-domain>/ns/<ns>/sa/<account>) on the
edge's TCP ports. 'trustmesh policy validate' accepts them.

The graph (YAML):

  trustDomain: cluster.local            # optional
  dns: {namespace: kube-system, labels: {k8s-app: kube-dns}}   # optional
  services:
    - {name: frontend, namespace: default, labels: {app: frontend}, ports: [8080]}
    - {name: api, labels: {app: api}, serviceAccount: api, ports: [8080/TCP]}
    - {name: database, labels: {app: database}, ports: [5432]}
  edges:
    - frontend -> api : 8080/TCP        # ports default to the callee's
    - api -> database
    - api -> 10.0.0.0/8 : 443           # a CIDR outside the cluster

--from-audit builds the graph from a Trustmesh proxy audit log (JSON lines):
every allowed decision between /ns/<ns>/sa/<account> identities is an edge
on its destination port. Services are service accounts; with -f, their
labels are those their pods (or workloads) share, else app=<account>.
--print-graph prints that graph (to review, edit and generate from) instead
of the policies. Output is YAML (or a JSON List) that kubectl applies.`,
		Example: `  trustmesh netpol generate --graph services.yaml > policies.yaml
  trustmesh netpol generate --from-audit api-audit.log -f k8s/ --print-graph > services.yaml
  trustmesh netpol generate --from-audit api-audit.log -f k8s/ --no-istio | kubectl apply -f -`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (graphFile == "") == (auditFile == "") {
				return usageErrorf(cmd, "give exactly one of --graph and --from-audit")
			}
			if output != "yaml" && output != "json" {
				return usageErrorf(cmd, "unknown output format %q: want yaml or json", output)
			}
			if graphFile != "" && len(in.paths) > 0 {
				return usageErrorf(cmd, "-f gives labels to --from-audit's services; a --graph declares its own")
			}
			var g *netpol.Graph
			source := ""
			if graphFile != "" {
				data, err := readFileOrStdin(cmd, graphFile)
				if err != nil {
					return err
				}
				if g, err = netpol.ParseGraph(data); err != nil {
					return fmt.Errorf("%s: %v", graphFile, err)
				}
				source = "service graph " + graphFile
			} else {
				var c *netpol.Cluster
				if len(in.paths) > 0 {
					var err error
					if c, err = in.load(cmd, "filename"); err != nil {
						return err
					}
				}
				r, err := openFileOrStdin(cmd, auditFile)
				if err != nil {
					return err
				}
				defer r.Close()
				var sum *netpol.AuditSummary
				g, sum, err = netpol.GraphFromAudit(r, c)
				if sum != nil {
					for _, w := range sum.Warnings {
						fmt.Fprintf(cmd.ErrOrStderr(), "%s: warning: %s\n", auditFile, w)
					}
				}
				if err != nil {
					return fmt.Errorf("%s: %v", auditFile, err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d allowed decisions → %d services, %d edges (left out: %d denied, %d unauthenticated, %d other identities, %d malformed)\n",
					auditFile, sum.Allowed, len(g.Services), len(g.Edges), sum.Denied, sum.Unauthenticated, sum.Foreign, sum.Malformed)
				source = "proxy audit log " + auditFile
			}
			if printGraph {
				b, err := g.Marshal()
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			gen, err := netpol.Generate(g, netpol.GenerateOptions{TrustDomain: trustDomain, NoIstio: noIstio})
			if err != nil {
				return err
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			if output == "json" {
				err = gen.WriteJSON(w)
			} else {
				err = gen.WriteYAML(w, netpol.GeneratedHeader(source))
			}
			if err != nil {
				return err
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&graphFile, "graph", "", "service graph YAML file, or - for stdin")
	cmd.Flags().StringVar(&auditFile, "from-audit", "", "Trustmesh proxy audit log (JSON lines), or - for stdin")
	in.register(cmd, "filename", "with --from-audit: manifests whose pods give the services' labels (repeatable)")
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "trust domain of AuthorizationPolicy principals (default: the graph's, else cluster.local)")
	cmd.Flags().BoolVar(&noIstio, "no-istio", false, "emit NetworkPolicies only")
	cmd.Flags().BoolVar(&printGraph, "print-graph", false, "print the service graph instead of policies")
	cmd.Flags().StringVarP(&output, "output", "o", "yaml", "output format: yaml or json (a v1 List)")
	return cmd
}

func readFileOrStdin(cmd *cobra.Command, path string) ([]byte, error) {
	r, err := openFileOrStdin(cmd, path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func openFileOrStdin(cmd *cobra.Command, path string) (io.ReadCloser, error) {
	if path == "-" {
		return io.NopCloser(cmd.InOrStdin()), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func newNetpolDiffCmd() *cobra.Command {
	var old, neu netpolInput
	var traffic trafficFlags
	var output string
	var exitCode bool
	cmd := &cobra.Command{
		Use:   "diff -f OLD… --against NEW… [--port N] [--protocol P]",
		Short: "Show which pod pairs gain or lose access between two sets of manifests",
		Long: `The dry run Kubernetes lacks: load OLD (-f) and NEW (--against), decide
every pod pair in both, and list the pairs whose allowed ports change, with
the ports gained (+) and lost (-). Without --port every port is compared.

When NEW holds no pods (a directory of policies only), it is analyzed with
OLD's pods and namespaces, so a proposed policy change can be checked
against a cluster dump. Pods in only one side are listed, not compared.

-o json: {"changes": [{"from", "to", "before", "after", "gained", "lost"}],
"gained": n, "lost": n, "unchanged": n, "added_pods": [...],
"removed_pods": [...]}. --exit-code exits 1 when anything changed.`,
		Example: `  trustmesh netpol diff -f cluster.yaml --against cluster.yaml --against proposed/
  trustmesh netpol diff -f main/k8s --against branch/k8s --port 5432 --exit-code`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageErrorf(cmd, "unknown output format %q: want table or json", output)
			}
			if len(old.paths) == 0 || len(neu.paths) == 0 {
				return usageErrorf(cmd, "-f OLD and --against NEW are required")
			}
			for _, p := range neu.paths {
				if p == "-" {
					return usageErrorf(cmd, "--against reads files and directories; stdin (-) is for -f")
				}
			}
			proto, err := traffic.proto(cmd)
			if err != nil {
				return err
			}
			port, err := traffic.number(cmd)
			if err != nil {
				return err
			}
			neu.defaultNS = old.defaultNS
			co, err := old.load(cmd, "filename")
			if err != nil {
				return err
			}
			cn, err := neu.load(cmd, "against")
			if err != nil {
				return err
			}
			cn = cn.WithPodsFrom(co)
			d := netpol.Diff(netpol.NewAnalyzer(co), netpol.NewAnalyzer(cn), netpol.MatrixOptions{Port: port, Protocol: proto})
			gained, lost := 0, 0
			for _, ch := range d.Changes {
				if !ch.Gained.IsEmpty() {
					gained++
				}
				if !ch.Lost.IsEmpty() {
					lost++
				}
			}
			if output == "json" {
				type change struct {
					From   string `json:"from"`
					To     string `json:"to"`
					Before string `json:"before"`
					After  string `json:"after"`
					Gained string `json:"gained"`
					Lost   string `json:"lost"`
				}
				rep := struct {
					Changes   []change `json:"changes"`
					Gained    int      `json:"gained"`
					Lost      int      `json:"lost"`
					Unchanged int      `json:"unchanged"`
					Added     []string `json:"added_pods"`
					Removed   []string `json:"removed_pods"`
				}{Changes: []change{}, Gained: gained, Lost: lost, Unchanged: d.Unchanged, Added: orEmpty(d.Added), Removed: orEmpty(d.Removed)}
				for _, ch := range d.Changes {
					rep.Changes = append(rep.Changes, change{ch.From, ch.To, ch.Before.String(), ch.After.String(), ch.Gained.String(), ch.Lost.String()})
				}
				if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				if len(d.Changes) > 0 {
					t := newTable(w, "FROM", "TO", "GAINED", "LOST", "NOW")
					for _, ch := range d.Changes {
						t.row(ch.From, ch.To, plusMinus("+", ch.Gained), plusMinus("-", ch.Lost), ch.After.String())
					}
					if err := t.flush(); err != nil {
						return err
					}
				}
				fmt.Fprintf(w, "%d pairs gain access, %d lose access, %d unchanged\n", gained, lost, d.Unchanged)
				if len(d.Added) > 0 {
					fmt.Fprintf(w, "only in NEW (not compared): %s\n", strings.Join(d.Added, ", "))
				}
				if len(d.Removed) > 0 {
					fmt.Fprintf(w, "only in OLD (not compared): %s\n", strings.Join(d.Removed, ", "))
				}
			}
			if exitCode && (len(d.Changes) > 0 || len(d.Added) > 0 || len(d.Removed) > 0) {
				return errSilentFailure
			}
			return nil
		},
	}
	old.register(cmd, "filename", "OLD: manifest file or directory, or - for stdin (repeatable)")
	neu.register(cmd, "against", "NEW: manifest file or directory (repeatable)")
	traffic.register(cmd, false)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&exitCode, "exit-code", false, "exit 1 when access changes")
	return cmd
}

func plusMinus(sign string, s netpol.PortSet) string {
	if s.IsEmpty() {
		return "-"
	}
	return sign + s.String()
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
