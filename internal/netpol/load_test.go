package netpol

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func problemsOf(c *Cluster, sev Severity) []string {
	var out []string
	for _, p := range c.Problems {
		if p.Severity == sev {
			out = append(out, p.String())
		}
	}
	return out
}

func wantProblem(t *testing.T, c *Cluster, sev Severity, parts ...string) {
	t.Helper()
	for _, p := range c.Problems {
		s := p.String()
		ok := p.Severity == sev
		for _, part := range parts {
			ok = ok && strings.Contains(s, part)
		}
		if ok {
			return
		}
	}
	t.Errorf("no %s containing %q in:\n  %s", sev, parts, strings.Join(append(problemsOf(c, SeverityError), problemsOf(c, SeverityWarning)...), "\n  "))
}

func podIDs(c *Cluster) []string {
	var out []string
	for _, p := range c.Pods {
		out = append(out, p.Kind+" "+p.ID())
	}
	return out
}

const listKubectl = `apiVersion: v1
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    labels:
      team: a
    name: shop
- apiVersion: v1
  kind: Pod
  metadata:
    annotations:
      note: |
        a block scalar
        - that looks like an item
    name: web
    namespace: shop
  spec:
    containers:
    - name: web
      image: web
  status:
    podIP: 10.0.0.1
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: deny
    namespace: shop
  spec:
    podSelector: {}
kind: List
metadata:
  resourceVersion: ""
`

const listJSON = `{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}},
  {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "annotations": {"note": "a block scalar\n- that looks like an item\n"}},
   "spec": {"containers": [{"name": "web", "image": "web"}]}, "status": {"podIP": "10.0.0.1"}},
  {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "shop"}, "spec": {"podSelector": {}}}
]}`

const listFlow = `{apiVersion: v1, kind: List, items: [
  {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {team: a}}},
  {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: shop}, spec: {containers: [{name: web, image: web}]}, status: {podIP: 10.0.0.1}},
  {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny, namespace: shop}, spec: {podSelector: {}}}]}
`

// TestLoadListForms: kubectl's YAML List (split into items as text),
// JSON, and flow-style YAML mean the same objects.
func TestLoadListForms(t *testing.T) {
	for name, data := range map[string]string{"kubectl yaml": listKubectl, "json": listJSON, "flow yaml": "# flow\n" + listFlow} {
		t.Run(name, func(t *testing.T) {
			c := Parse(LoadOptions{}, "list", []byte(data))
			if len(c.Problems) > 0 {
				t.Fatalf("problems: %v", c.Problems)
			}
			if got := podIDs(c); !reflect.DeepEqual(got, []string{"Pod shop/web"}) {
				t.Errorf("pods %v", got)
			}
			if len(c.Policies) != 1 || c.Policies[0].ID() != "shop/deny" || !c.Policies[0].Ingress || c.Policies[0].Egress {
				t.Errorf("policies %+v", c.Policies)
			}
			ns := c.Namespace("shop")
			if ns == nil || ns.Implicit || ns.Labels["team"] != "a" || ns.Labels[NamespaceNameLabel] != "shop" {
				t.Errorf("namespace %+v", ns)
			}
			if p := c.Pods[0]; p.Source.Item != 1 || p.Source.Document != 1 {
				t.Errorf("pod source %+v: want document 1, items[1]", p.Source)
			}
		})
	}
}

func TestLoadTypedListItemsOmitKind(t *testing.T) {
	c := Parse(LoadOptions{}, "l.yaml", []byte(`
apiVersion: v1
kind: PodList
items:
- metadata: {name: a, namespace: x, labels: {app: a}}
  spec: {containers: [{name: a, image: a}]}
- metadata: {name: b, namespace: x}
  spec: {containers: [{name: b, image: b}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicyList
items:
- metadata: {name: p, namespace: x}
  spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}
`))
	if len(c.Problems) > 0 {
		t.Fatalf("problems: %v", c.Problems)
	}
	if got := podIDs(c); !reflect.DeepEqual(got, []string{"Pod x/a", "Pod x/b"}) {
		t.Errorf("pods %v", got)
	}
	if len(c.Policies) != 1 || c.Policies[0].Ingress || !c.Policies[0].Egress {
		t.Errorf("policies %+v", c.Policies)
	}
}

func TestLoadDocumentsAndLines(t *testing.T) {
	data := `# leading comment
---
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: a, image: a}]}
---
# only a comment
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: typo
spec:
  podSelector: {}
  ingres:
  - from: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bad-port
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: [80]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-range}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {port: 90, endPort: 80}
    - {port: http, endPort: 81}
    - {protocol: ICMP}
    - {endPort: 81}
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16, 10.0.0.0/8]}
      podSelector: {}
    - {}
    - podSelector: {matchExpressions: [{key: app, operator: Like, values: [a]}]}
    - namespaceSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}
  policyTypes: [Ingress, Sideways]
---
apiVersion: v1
kind: Pod
metadata: {name: yes-label, labels: {enabled: yes}}
spec: {containers: [{name: a, image: a}]}
---
just a string
---
kind: Pod
metadata: {name: no-version}
---
apiVersion: v1
kind: Pod
metadata: {name: bad: yaml}
---
`
	c := Parse(LoadOptions{}, "f.yaml", []byte(data))
	// Unknown field: a warning at its line, the object kept.
	wantProblem(t, c, SeverityWarning, "f.yaml:16 (document 4)", "NetworkPolicy default/typo", "spec.ingres: unknown field")
	if len(c.Policies) != 1 || c.Policies[0].Name != "typo" {
		t.Errorf("policies %v: want typo (unknown fields are warnings)", c.Policies)
	}
	wantProblem(t, c, SeverityError, "f.yaml:25 (document 5)", "NetworkPolicy default/bad-port", "spec.ingress.ports.port", "wrong type")
	for _, want := range [][]string{
		{"(document 6)", "spec.ingress[0].ports[0].endPort", "must be greater than or equal to `port`"},
		{"(document 6)", "spec.ingress[0].ports[1].endPort", "non-numeric"},
		{"(document 6)", "spec.ingress[0].ports[2].protocol", `"ICMP"`},
		{"(document 6)", "spec.ingress[0].ports[3].endPort", "not specified"},
		{"(document 6)", "spec.egress[0].to[0]: Forbidden: may not specify both ipBlock and another peer"},
		{"(document 6)", "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"},
		{"(document 6)", "spec.egress[0].to[0].ipBlock.except[1]", "strict subset"},
		{"(document 6)", "spec.egress[0].to[1]: Required value: must specify a peer"},
		{"(document 6)", "spec.egress[0].to[2].podSelector.matchExpressions[0].operator"},
		{"(document 6)", "spec.egress[0].to[3].namespaceSelector.matchExpressions[0].values"},
		{"(document 6)", "spec.policyTypes[1]", "Sideways"},
		{"f.yaml:51 (document 7)", "metadata.labels", "YAML reads unquoted y, yes"},
		{"f.yaml:54 (document 8)", "not a Kubernetes object: want a mapping"},
		{"(document 9)", "no apiVersion"},
		{"(document 10)", "invalid YAML"},
	} {
		wantProblem(t, c, SeverityError, want...)
	}
	// The empty documents (a comment, a trailing separator) are not errors.
	if n := len(problemsOf(c, SeverityError)); n != 16 {
		t.Errorf("%d errors, want 16:\n  %s", n, strings.Join(problemsOf(c, SeverityError), "\n  "))
	}
	if got := podIDs(c); !reflect.DeepEqual(got, []string{"Pod default/a"}) {
		t.Errorf("pods %v", got)
	}
	if c.Err() == nil || !strings.Contains(c.Err().Error(), "16 errors") {
		t.Errorf("Err: %v", c.Err())
	}
}

func TestLoadNamespacesAndDefaults(t *testing.T) {
	c := Parse(LoadOptions{DefaultNamespace: "dev"}, "f.yaml", []byte(`
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {kubernetes.io/metadata.name: spoofed, env: prod}
---
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: a, image: a}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: staging}
spec: {podSelector: {}}
`))
	if len(c.Problems) > 0 {
		t.Fatal(c.Problems)
	}
	if c.Pods[0].Namespace != "dev" {
		t.Errorf("pod namespace %q, want the default namespace dev", c.Pods[0].Namespace)
	}
	var names []string
	for _, ns := range c.Namespaces {
		names = append(names, ns.Name)
		if ns.Labels[NamespaceNameLabel] != ns.Name {
			t.Errorf("namespace %s: %s=%q", ns.Name, NamespaceNameLabel, ns.Labels[NamespaceNameLabel])
		}
	}
	if !reflect.DeepEqual(names, []string{"dev", "prod", "staging"}) {
		t.Errorf("namespaces %v: pods and policies make theirs exist", names)
	}
	if !c.Namespace("dev").Implicit || c.Namespace("prod").Implicit || c.Namespace("prod").Labels["env"] != "prod" {
		t.Errorf("namespaces %+v", c.Namespaces)
	}
}

func TestLoadWorkloads(t *testing.T) {
	deploy := `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      hostNetwork: false
      serviceAccountName: web-sa
      initContainers:
      - {name: proxy, image: p, restartPolicy: Always, ports: [{name: proxy, containerPort: 15001}]}
      - {name: migrate, image: m, ports: [{name: ignored, containerPort: 1}]}
      containers:
      - {name: web, image: w, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}
`
	rs := `
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-5d9c
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: "1"}]
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: w}]}
`
	pod := `
apiVersion: v1
kind: Pod
metadata:
  name: web-5d9c-abcde
  namespace: shop
  labels: {app: web}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d9c, uid: "2"}]
spec: {containers: [{name: web, image: w}]}
status: {phase: Running, podIP: 10.1.1.1}
`
	done := `
apiVersion: v1
kind: Pod
metadata: {name: job-xyz, namespace: shop}
spec: {containers: [{name: j, image: j}]}
status: {phase: Succeeded, podIP: 10.1.1.2}
`
	cron := `
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: shop}
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: nightly}}
        spec: {restartPolicy: Never, containers: [{name: nightly, image: nightly}]}
`
	c := Parse(LoadOptions{}, "w.yaml", []byte(strings.Join([]string{deploy, cron}, "---")))
	if len(c.Problems) > 0 {
		t.Fatal(c.Problems)
	}
	if got := podIDs(c); !reflect.DeepEqual(got, []string{"CronJob shop/nightly", "Deployment shop/web"}) {
		t.Errorf("workloads stand for pods: %v", got)
	}
	web := c.Pods[1]
	want := []ContainerPort{{"http", 8080, TCP}, {"dns", 53, UDP}, {"proxy", 15001, TCP}}
	if !reflect.DeepEqual(web.Ports, want) || web.ServiceAccount != "web-sa" || len(web.IPs) != 0 || web.Labels["app"] != "web" {
		t.Errorf("deployment pod %+v: want the template's ports (sidecars included), account, labels, no IP", web)
	}
	// With its ReplicaSet, the Deployment stands for the pods.
	c = Parse(LoadOptions{}, "w.yaml", []byte(strings.Join([]string{deploy, rs}, "---")))
	if got := podIDs(c); !reflect.DeepEqual(got, []string{"Deployment shop/web"}) {
		t.Errorf("deployment + replicaset: %v", got)
	}
	// With the real pods, they do; finished pods have no network.
	c = Parse(LoadOptions{}, "w.yaml", []byte(strings.Join([]string{deploy, rs, pod, done}, "---")))
	if got := podIDs(c); !reflect.DeepEqual(got, []string{"Pod shop/web-5d9c-abcde"}) {
		t.Errorf("deployment + replicaset + pod: %v", got)
	}
	if c.Finished != 1 {
		t.Errorf("finished pods %d, want 1", c.Finished)
	}
}

func TestLoadKindsAndRedefinitions(t *testing.T) {
	c := Parse(LoadOptions{}, "k.yaml", []byte(`
apiVersion: v1
kind: Service
metadata: {name: s}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: calico}
---
apiVersion: extensions/v1beta1
kind: NetworkPolicy
metadata: {name: old}
---
apiVersion: apps/v1beta2
kind: Deployment
metadata: {name: old}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec: {podSelector: {matchLabels: {v: "1"}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec: {podSelector: {matchLabels: {v: "2"}}}
`))
	if c.Ignored["v1 Service"] != 1 || c.Ignored["v1 ConfigMap"] != 1 || c.Ignored["projectcalico.org/v3 NetworkPolicy"] != 1 {
		t.Errorf("ignored %v", c.Ignored)
	}
	wantProblem(t, c, SeverityWarning, "Calico policies are not analyzed")
	wantProblem(t, c, SeverityError, "extensions/v1beta1 NetworkPolicy is not served", "networking.k8s.io/v1")
	wantProblem(t, c, SeverityError, "apps/v1beta2 Deployment is not served", "apps/v1")
	wantProblem(t, c, SeverityWarning, "(document 7)", "NetworkPolicy default/p", "defined again (first at k.yaml:22 (document 6))")
	if len(c.Policies) != 1 || c.Policies[0].Spec.PodSelector.MatchLabels["v"] != "2" {
		t.Errorf("the later definition wins: %+v", c.Policies)
	}
}

func TestLoadDirectoriesAndStdin(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("apps/web.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: w, image: w}]}\n")
	write("apps/deep/db.yml", "apiVersion: v1\nkind: Pod\nmetadata: {name: db}\nspec: {containers: [{name: d, image: d}]}\n")
	write("policy.json", `{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"}, "spec": {"podSelector": {}}}`)
	write("chart/values.yaml", "replicas: 3\nimage: web\n")
	write("chart/templates/pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Values.name }}\n")
	write("README.md", "# not a manifest\n")
	write(".git/config.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: hidden}\n")
	c := Load(LoadOptions{Stdin: strings.NewReader("apiVersion: v1\nkind: Pod\nmetadata: {name: piped}\nspec: {containers: [{name: p, image: p}]}\n")}, dir, "-")
	if got := podIDs(c); !reflect.DeepEqual(got, []string{"Pod default/db", "Pod default/piped", "Pod default/web"}) {
		t.Errorf("pods %v", got)
	}
	if len(c.Policies) != 1 {
		t.Errorf("policies %v", c.Policies)
	}
	// values.yaml holds no objects, the Helm template is no YAML until
	// rendered: both skipped, the template with a warning saying why.
	if len(c.SkippedFiles) != 2 || !strings.HasSuffix(c.SkippedFiles[0], "pod.yaml") || !strings.HasSuffix(c.SkippedFiles[1], "values.yaml") {
		t.Errorf("skipped %v", c.SkippedFiles)
	}
	wantProblem(t, c, SeverityWarning, "templates/pod.yaml", "skipped file: invalid YAML")
	// Named on its own, a file must be a manifest.
	c = Load(LoadOptions{}, filepath.Join(dir, "chart/values.yaml"))
	wantProblem(t, c, SeverityError, "values.yaml", "not a Kubernetes object")
	c = Load(LoadOptions{}, filepath.Join(dir, "missing.yaml"))
	wantProblem(t, c, SeverityError, "missing.yaml", "no such file")
	c = Load(LoadOptions{Stdin: strings.NewReader("")}, "-", "-")
	wantProblem(t, c, SeverityError, "stdin (-) named more than once")
}

func TestLoadPodNetwork(t *testing.T) {
	c := Parse(LoadOptions{}, "p.yaml", []byte(`
apiVersion: v1
kind: Pod
metadata: {name: ds, namespace: kube-system}
spec: {hostNetwork: true, nodeName: n1, containers: [{name: c, image: c}]}
status: {podIP: 192.168.1.5, podIPs: [{ip: 192.168.1.5}]}
---
apiVersion: v1
kind: Pod
metadata: {name: dual}
spec: {nodeName: n1, containers: [{name: c, image: c, ports: [{containerPort: 99999}]}]}
status: {hostIP: 192.168.1.5, podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}, {ip: not-an-ip}]}
`))
	wantProblem(t, c, SeverityError, "status.podIPs[2].ip", `invalid IP "not-an-ip"`)
	wantProblem(t, c, SeverityError, "spec.containers[0].ports[0].containerPort", "between 1 and 65535")
	var ds, dual *Pod
	for _, p := range c.Pods {
		if p.Name == "ds" {
			ds = p
		} else {
			dual = p
		}
	}
	if ds == nil || !ds.HostNetwork || ds.HostIP.String() != "192.168.1.5" {
		t.Errorf("hostNetwork pod %+v: its IP is its node's", ds)
	}
	if dual == nil || len(dual.IPs) != 2 || dual.IPs[1].String() != "fd00::5" {
		t.Errorf("dual-stack pod %+v", dual)
	}
}
