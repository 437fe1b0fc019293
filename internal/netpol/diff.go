package netpol

import "sort"

// Change is one pod pair whose access differs between two inputs.
type Change struct {
	From   string  `json:"from"`
	To     string  `json:"to"`
	Before PortSet `json:"-"`
	After  PortSet `json:"-"`
	Gained PortSet `json:"-"` // allowed after, not before
	Lost   PortSet `json:"-"` // allowed before, not after
}

// DiffResult compares the reachability of two inputs.
type DiffResult struct {
	Changes   []Change
	Added     []string // pods only in the new input
	Removed   []string // pods only in the old input
	Unchanged int      // pairs whose allowed ports are the same
}

// WithPodsFrom returns c with o's pods and namespaces when c has no pods
// of its own, so a directory holding only policies can be compared
// against a cluster dump. Namespaces c defines win.
func (c *Cluster) WithPodsFrom(o *Cluster) *Cluster {
	if len(c.Pods) > 0 {
		return c
	}
	out := *c
	out.Pods = o.Pods
	byName := map[string]*Namespace{}
	for _, ns := range o.Namespaces {
		byName[ns.Name] = ns
	}
	for _, ns := range c.Namespaces {
		if prev, ok := byName[ns.Name]; !ok || !ns.Implicit || prev.Implicit {
			byName[ns.Name] = ns
		}
	}
	out.Namespaces = nil
	for _, ns := range byName {
		out.Namespaces = append(out.Namespaces, ns)
	}
	sort.Slice(out.Namespaces, func(i, j int) bool { return out.Namespaces[i].Name < out.Namespaces[j].Name })
	return &out
}

// Diff compares old and new: which pairs of pods present in both gain or
// lose access (on opts.Port, or on any port when it is 0).
func Diff(old, new *Analyzer, opts MatrixOptions) *DiffResult {
	opts.IPs = nil
	mo, mn := old.Matrix(opts), new.Matrix(opts)
	key := func(p *Pod) string { return p.Kind + " " + p.ID() }
	idxOld, idxNew := map[string]int{}, map[string]int{}
	for i, p := range old.pods {
		idxOld[key(p)] = i
	}
	for i, p := range new.pods {
		idxNew[key(p)] = i
	}
	r := &DiffResult{}
	name := func(p *Pod) string {
		if p.Kind != "Pod" {
			return p.ID() + " (" + p.Kind + ")"
		}
		return p.ID()
	}
	for _, p := range new.pods {
		if _, ok := idxOld[key(p)]; !ok {
			r.Added = append(r.Added, name(p))
		}
	}
	for _, p := range old.pods {
		if _, ok := idxNew[key(p)]; !ok {
			r.Removed = append(r.Removed, name(p))
		}
	}
	for i, from := range old.pods {
		ni, ok := idxNew[key(from)]
		if !ok {
			continue
		}
		for j, to := range old.pods {
			nj, ok := idxNew[key(to)]
			if !ok {
				continue
			}
			before, after := mo.Ports(i, j), mn.Ports(ni, nj)
			if before.Equal(after) {
				r.Unchanged++
				continue
			}
			r.Changes = append(r.Changes, Change{From: name(from), To: name(to), Before: before, After: after,
				Gained: after.Minus(before), Lost: before.Minus(after)})
		}
	}
	return r
}
