package netpol

import (
	"fmt"
	"net/netip"

	networkingv1 "k8s.io/api/networking/v1"
	metavalidation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

type fieldErr struct{ field, msg string }

// validatePolicy applies the API server's NetworkPolicy validation, so a
// policy the cluster would refuse is refused here rather than analyzed as
// if it existed. The rules are the networking/v1 ones: selectors as
// metav1 validates them, protocols TCP/UDP/SCTP, ports 1-65535 or an
// IANA service name, endPort only after a numeric port and not below it,
// a peer is exactly one of (pod/namespace selectors) or ipBlock, except
// blocks strictly inside their cidr, at most the two policyTypes.
func validatePolicy(spec *networkingv1.NetworkPolicySpec) []fieldErr {
	var errs []fieldErr
	add := func(el field.ErrorList) {
		for _, e := range el {
			errs = append(errs, fieldErr{e.Field, e.ErrorBody()})
		}
	}
	addf := func(path, format string, a ...any) { errs = append(errs, fieldErr{path, fmt.Sprintf(format, a...)}) }
	opts := metavalidation.LabelSelectorValidationOptions{}
	spec0 := field.NewPath("spec")
	add(metavalidation.ValidateLabelSelector(&spec.PodSelector, opts, spec0.Child("podSelector")))

	ports := func(path *field.Path, ps []networkingv1.NetworkPolicyPort) {
		for i := range ps {
			validatePort(&ps[i], path.Index(i).String(), addf)
		}
	}
	peers := func(path *field.Path, ps []networkingv1.NetworkPolicyPeer) {
		for i := range ps {
			p := &ps[i]
			pp := path.Index(i)
			n := 0
			if p.PodSelector != nil {
				n++
				add(metavalidation.ValidateLabelSelector(p.PodSelector, opts, pp.Child("podSelector")))
			}
			if p.NamespaceSelector != nil {
				n++
				add(metavalidation.ValidateLabelSelector(p.NamespaceSelector, opts, pp.Child("namespaceSelector")))
			}
			if p.IPBlock != nil {
				n++
				validateIPBlock(p.IPBlock, pp.Child("ipBlock").String(), addf)
			}
			switch {
			case n == 0:
				addf(pp.String(), "Required value: must specify a peer")
			case n > 1 && p.IPBlock != nil:
				addf(pp.String(), "Forbidden: may not specify both ipBlock and another peer")
			}
		}
	}
	for i := range spec.Ingress {
		path := spec0.Child("ingress").Index(i)
		ports(path.Child("ports"), spec.Ingress[i].Ports)
		peers(path.Child("from"), spec.Ingress[i].From)
	}
	for i := range spec.Egress {
		path := spec0.Child("egress").Index(i)
		ports(path.Child("ports"), spec.Egress[i].Ports)
		peers(path.Child("to"), spec.Egress[i].To)
	}
	if len(spec.PolicyTypes) > 2 {
		addf("spec.policyTypes", "Invalid value: may not specify more than two policyTypes")
		return errs
	}
	for i, t := range spec.PolicyTypes {
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			addf(fmt.Sprintf("spec.policyTypes[%d]", i), "Unsupported value: %q: supported values: \"Ingress\", \"Egress\"", t)
		}
	}
	return errs
}

func validatePort(p *networkingv1.NetworkPolicyPort, path string, addf func(string, string, ...any)) {
	if p.Protocol != nil {
		if _, ok := protocolOf(p.Protocol); !ok {
			addf(path+".protocol", "Unsupported value: %q: supported values: \"TCP\", \"UDP\", \"SCTP\"", *p.Protocol)
		}
	}
	switch {
	case p.Port == nil:
		if p.EndPort != nil {
			addf(path+".endPort", "Invalid value: %d: may not be specified when `port` is not specified", *p.EndPort)
		}
	case p.Port.Type == intstr.Int:
		for _, msg := range validation.IsValidPortNum(int(p.Port.IntVal)) {
			addf(path+".port", "Invalid value: %d: %s", p.Port.IntVal, msg)
		}
		if p.EndPort != nil {
			if *p.EndPort < p.Port.IntVal {
				addf(path+".endPort", "Invalid value: %d: must be greater than or equal to `port`", *p.EndPort)
			}
			for _, msg := range validation.IsValidPortNum(int(*p.EndPort)) {
				addf(path+".endPort", "Invalid value: %d: %s", *p.EndPort, msg)
			}
		}
	default:
		if p.EndPort != nil {
			addf(path+".endPort", "Invalid value: %d: may not be specified when `port` is non-numeric", *p.EndPort)
		}
		for _, msg := range validation.IsValidPortName(p.Port.StrVal) {
			addf(path+".port", "Invalid value: %q: %s", p.Port.StrVal, msg)
		}
	}
}

func validateIPBlock(b *networkingv1.IPBlock, path string, addf func(string, string, ...any)) {
	if b.CIDR == "" {
		addf(path+".cidr", "Required value")
		return
	}
	cidr, err := parseCIDR(b.CIDR)
	if err != nil {
		addf(path+".cidr", "Invalid value: %q: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)", b.CIDR)
		return
	}
	for i, e := range b.Except {
		ep := fmt.Sprintf("%s.except[%d]", path, i)
		ex, err := parseCIDR(e)
		if err != nil {
			addf(ep, "Invalid value: %q: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)", e)
			continue
		}
		if !cidr.Contains(ex.Addr()) || cidr.Bits() >= ex.Bits() {
			addf(ep, "Invalid value: %q: must be a strict subset of `cidr`", e)
		}
	}
}

// parseCIDR reads a CIDR as the API's legacy CIDR fields accept it: host
// bits may be set (10.0.0.1/8 means 10.0.0.0/8); IPv4-mapped IPv6 is IPv4.
func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}
