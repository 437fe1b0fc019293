package agent

import (
	"encoding/json"
	"os"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"                     // Any types in the example
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3" // Any types in the example
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	"github.com/trustmesh/trustmesh/internal/configfile"
)

// TestEnvoyExample: examples/envoy/envoy.yaml is a valid Envoy v3 bootstrap
// (decoded with go-control-plane's types), and agent.yaml serves exactly
// the secret names and socket it uses.
func TestEnvoyExample(t *testing.T) {
	raw, err := os.ReadFile("../../examples/envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var boot bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &boot); err != nil {
		t.Fatalf("envoy.yaml is not a valid Envoy bootstrap: %v", err)
	}
	if err := boot.ValidateAll(); err != nil {
		t.Fatalf("envoy.yaml fails Envoy's validation rules: %v", err)
	}
	var c Config
	if err := configfile.Load("../../examples/envoy/agent.yaml", &c); err != nil {
		t.Fatal(err)
	}
	chain := boot.StaticResources.Listeners[0].FilterChains[0]
	var tlsCtx tlsv3.DownstreamTlsContext
	if err := chain.TransportSocket.GetTypedConfig().UnmarshalTo(&tlsCtx); err != nil {
		t.Fatal(err)
	}
	common := tlsCtx.CommonTlsContext
	if got := common.TlsCertificateSdsSecretConfigs[0].Name; got != c.SDS.DefaultSVIDName {
		t.Errorf("Envoy asks for certificate %q, agent.yaml serves %q", got, c.SDS.DefaultSVIDName)
	}
	if got := common.GetValidationContextSdsSecretConfig().GetName(); got != c.SDS.DefaultBundleName {
		t.Errorf("Envoy asks for validation context %q, agent.yaml serves %q", got, c.SDS.DefaultBundleName)
	}
	for _, cl := range boot.StaticResources.Clusters {
		if cl.Name != "spire_agent" {
			continue
		}
		pipe := cl.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetPipe().GetPath()
		if pipe != c.Socket {
			t.Errorf("Envoy's SDS cluster uses %q, the agent listens on %q", pipe, c.Socket)
		}
	}
}
