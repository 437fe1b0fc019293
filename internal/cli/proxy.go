package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/trustmesh/trustmesh/internal/policy"
	"github.com/trustmesh/trustmesh/internal/proxy"
)

func newProxyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the mTLS sidecar proxy that authorizes every request",
		Long: `The sidecar proxy: inbound listeners terminate mTLS in front of an application,
verify the caller's X.509-SVID and ask the policy engine about every request;
outbound listeners originate mTLS to other proxies. See docs/proxy.md.`,
		Example: `  trustmesh proxy run --inbound-listen 127.0.0.1:8443 --inbound-forward 127.0.0.1:8080 \
      --policy examples/policies/matrix --label app=api
  trustmesh proxy validate --config proxy.yaml`,
	}
	cmd.AddCommand(newProxyRunCmd(), newProxyValidateCmd())
	return cmd
}

// proxyFlags override the proxy's YAML config; the listener flags add one
// inbound and/or one outbound listener.
type proxyFlags struct {
	config, socket, svidID, namespace           string
	labels, policies, data                      []string
	inboundListen, inboundForward, inboundProto string
	inboundBackend                              string
	outboundListen, outboundUpstream            string
	outboundProto                               string
	outboundIDs                                 []string
	auditLog, metricsAddr, logLevel, logFormat  string
	query, defaultMTLS                          string
	rootNamespaces, aliases, trustDomains       []string
}

func (f *proxyFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML config file (flags override its values)")
	fl.StringVar(&f.socket, "socket", "", "Workload API socket (default $SPIFFE_ENDPOINT_SOCKET, then "+proxy.DefaultSocket+")")
	fl.StringVar(&f.svidID, "svid-id", "", "which of several SVIDs to use (default: the first)")
	fl.StringVar(&f.namespace, "namespace", "", "the workload's namespace for policy (default: from its /ns/<ns>/sa/<sa> SPIFFE ID)")
	fl.StringArrayVar(&f.labels, "label", nil, "a workload label k=v, selecting policies (repeatable)")
	fl.StringArrayVar(&f.policies, "policy", nil, "policy file or directory, watched and reloaded on change (repeatable)")
	fl.StringArrayVar(&f.data, "data", nil, "Rego data document (repeatable)")
	fl.StringVar(&f.query, "query", "", "Rego decision query (default "+"data.trustmesh.authz.allow"+")")
	fl.StringVar(&f.defaultMTLS, "default-mtls", "", "mTLS mode where no PeerAuthentication sets one (default STRICT)")
	fl.StringSliceVar(&f.rootNamespaces, "root-namespace", nil, "namespaces whose policies apply mesh-wide (default trustmesh-system, istio-system)")
	fl.StringSliceVar(&f.aliases, "trust-domain-alias", nil, "trust domain aliases for policy principals")
	fl.StringSliceVar(&f.trustDomains, "trust-domain", nil, "trust domains callers may belong to (default: the SVID's)")
	fl.StringVar(&f.inboundListen, "inbound-listen", "", "inbound listener HOST:PORT (mTLS from other proxies)")
	fl.StringVar(&f.inboundForward, "inbound-forward", "", "the application's HOST:PORT")
	fl.StringVar(&f.inboundProto, "inbound-protocol", "", "http (default) or tcp")
	fl.StringVar(&f.inboundBackend, "inbound-backend", "", "how HTTP reaches the application: http1 (default) or h2c")
	fl.StringVar(&f.outboundListen, "outbound-listen", "", "outbound listener HOST:PORT (plaintext from the application)")
	fl.StringVar(&f.outboundUpstream, "outbound-upstream", "", "the upstream proxy's HOST:PORT")
	fl.StringArrayVar(&f.outboundIDs, "outbound-spiffe-id", nil, "SPIFFE ID the upstream must present (repeatable: any of them)")
	fl.StringVar(&f.outboundProto, "outbound-protocol", "", "http (default) or tcp")
	fl.StringVar(&f.auditLog, "audit-log", "", "decision audit log file (default stdout)")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on HOST:PORT (off unless set)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default info)")
	fl.StringVar(&f.logFormat, "log-format", "", "text or json (default text)")
}

func (f *proxyFlags) settings(cmd *cobra.Command) (proxy.Settings, error) {
	labels, err := parseLabels(cmd, f.labels)
	if err != nil {
		return proxy.Settings{}, err
	}
	return proxy.LoadSettings(f.config, func(c *proxy.Config) {
		changed := cmd.Flags().Changed
		set := func(flag string, dst *string, v string) {
			if changed(flag) {
				*dst = v
			}
		}
		set("socket", &c.Socket, f.socket)
		set("svid-id", &c.SVIDID, f.svidID)
		set("namespace", &c.Namespace, f.namespace)
		set("audit-log", &c.AuditLog, f.auditLog)
		set("metrics-addr", &c.MetricsAddr, f.metricsAddr)
		set("log-level", &c.LogLevel, f.logLevel)
		set("log-format", &c.LogFormat, f.logFormat)
		set("query", &c.Policy.Query, f.query)
		set("default-mtls", &c.Policy.DefaultMTLS, f.defaultMTLS)
		if changed("label") {
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			for k, v := range labels {
				c.Labels[k] = v
			}
		}
		if changed("policy") {
			c.Policy.Paths = f.policies
		}
		if changed("data") {
			c.Policy.Data = f.data
		}
		if changed("root-namespace") {
			c.Policy.RootNamespaces = f.rootNamespaces
		}
		if changed("trust-domain-alias") {
			c.Policy.TrustDomainAliases = f.aliases
		}
		if changed("trust-domain") {
			c.TrustDomains = f.trustDomains
		}
		if changed("inbound-listen") || changed("inbound-forward") {
			c.Inbound = append(c.Inbound, proxy.ListenerSpec{Name: "inbound", Listen: f.inboundListen, Forward: f.inboundForward, Protocol: f.inboundProto, Backend: f.inboundBackend})
		}
		if changed("outbound-listen") || changed("outbound-upstream") {
			c.Outbound = append(c.Outbound, proxy.ListenerSpec{Name: "outbound", Listen: f.outboundListen, Upstream: f.outboundUpstream, Protocol: f.outboundProto, SPIFFEIDs: f.outboundIDs})
		}
	})
}

func newProxyRunCmd() *cobra.Command {
	var f proxyFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a sidecar proxy for one workload",
		Long: `Run the sidecar. Its identity comes from the agent's Workload API only; SVID
and bundle rotations apply to new handshakes without dropping connections.

Inbound (mTLS → policy → application): TLS 1.3, a client SVID from an accepted
trust domain required, then every HTTP request (HTTP/1.1, HTTP/2, gRPC,
WebSocket) or TCP connection is decided by the policy engine. Allowed requests
reach the application with X-Forwarded-Client-Cert (By=…;Hash=…;URI=…) and
X-Request-Id, after any identity header the client sent is removed; denied
ones get 403 "RBAC: access denied". PeerAuthentication decides per port:
STRICT refuses plaintext, PERMISSIVE serves it as unauthenticated.

Outbound (application → mTLS): a local plaintext listener; the proxy connects
to the upstream proxy with its SVID and accepts only the SPIFFE IDs given.

Every decision is a JSON line in the audit log; SIGUSR1 reopens the audit
log file (rotation: rename it, then signal). Policy files are watched and
reloaded atomically; a change that does not compile is refused. With no
policy at all, every request is denied. SIGTERM drains in-flight requests.`,
		Example: `  # The API's sidecar: mTLS on :8443 in front of the app on :8080
  trustmesh proxy run --svid-id spiffe://example.org/ns/default/sa/api --label app=api \
      --inbound-listen 127.0.0.1:8443 --inbound-forward 127.0.0.1:8080 \
      --policy examples/policies/matrix --audit-log api-audit.log

  # The frontend's sidecar: the app calls http://127.0.0.1:15001 to reach the API
  trustmesh proxy run --svid-id spiffe://example.org/ns/default/sa/frontend \
      --outbound-listen 127.0.0.1:15001 --outbound-upstream 127.0.0.1:8443 \
      --outbound-spiffe-id spiffe://example.org/ns/default/sa/api

  # Several listeners: see examples/proxy/proxy.yaml
  trustmesh proxy run --config proxy.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.settings(cmd)
			if err != nil {
				return fmt.Errorf("invalid configuration:\n%w", indentErrors(err))
			}
			return proxy.New(set, newLogger(set.LogLevel, set.LogFormat)).Run(cmd.Context())
		},
	}
	f.register(cmd)
	return cmd
}

func newProxyValidateCmd() *cobra.Command {
	var f proxyFlags
	cmd := &cobra.Command{
		Use:     "validate",
		Short:   "Check a proxy config file and report every problem in it",
		Example: "  trustmesh proxy validate --config proxy.yaml",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.config == "" {
				return usageErrorf(cmd, "--config is required")
			}
			set, err := f.settings(cmd)
			if err != nil {
				return fmt.Errorf("%s is invalid:\n%w", f.config, indentErrors(err))
			}
			if len(set.PolicyPaths) > 0 {
				// The trust domain comes from the SVID at run time; the
				// default stands in for it here.
				if s, problems := policy.LoadAndCompile(cmd.Context(), set.PolicyPaths, set.PolicyData, set.PolicyOptions); s == nil {
					var errs []string
					for _, p := range problems {
						if p.Severity == policy.SeverityError {
							errs = append(errs, p.String())
						}
					}
					return fmt.Errorf("%s: its policy does not compile:\n  %s", f.config, strings.Join(errs, "\n  "))
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: configuration is valid\n", f.config)
			return nil
		},
	}
	f.register(cmd)
	return cmd
}
