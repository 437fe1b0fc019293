// Package deploy holds deployment manifests; this test keeps them true:
// every Kubernetes object decodes strictly with the API types, and every
// trustmesh command line in them parses with the real CLI.
package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/trustmesh/trustmesh/internal/cli"
)

func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	kinds := map[string]int{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(data, []byte("\n---\n")) {
			var meta struct {
				Kind string `json:"kind"`
			}
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				t.Fatalf("%s doc %d: %v", f, i, err)
			}
			var obj any
			var pods *corev1.PodSpec
			switch meta.Kind {
			case "Namespace":
				obj = &corev1.Namespace{}
			case "ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "Service":
				obj = &corev1.Service{}
			case "ConfigMap":
				obj = &corev1.ConfigMap{}
			case "Deployment":
				d := &appsv1.Deployment{}
				obj, pods = d, &d.Spec.Template.Spec
			case "DaemonSet":
				d := &appsv1.DaemonSet{}
				obj, pods = d, &d.Spec.Template.Spec
			default:
				t.Fatalf("%s doc %d: unexpected kind %q", f, i, meta.Kind)
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s doc %d (%s): %v", f, i, meta.Kind, err)
			}
			kinds[meta.Kind]++
			if pods != nil {
				for _, c := range pods.Containers {
					if strings.Contains(c.Image, "trustmesh") {
						checkArgs(t, f, c.Args)
					}
				}
			}
		}
	}
	for _, k := range []string{"Deployment", "DaemonSet", "Service"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in the manifests", k)
		}
	}
}

// checkArgs parses a container's trustmesh arguments with the CLI's own
// flag definitions (without running anything).
func checkArgs(t *testing.T, file string, args []string) {
	t.Helper()
	root := cli.NewRoot()
	cmd, rest, err := root.Find(args)
	if err != nil || cmd == root {
		t.Errorf("%s: %v is not a trustmesh command: %v", file, args, err)
		return
	}
	// $(VAR) references are expanded by Kubernetes; any value parses.
	if err := cmd.ParseFlags(rest); err != nil {
		t.Errorf("%s: %s %v: %v", file, cmd.CommandPath(), args, err)
	}
	if extra := cmd.Flags().Args(); len(extra) > 0 {
		t.Errorf("%s: %s: unexpected arguments %v", file, cmd.CommandPath(), extra)
	}
}
