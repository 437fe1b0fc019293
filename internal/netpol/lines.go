package netpol

import (
	"strconv"
	"strings"

	yamlv3 "gopkg.in/yaml.v3"
)

// yamlNode is a document parsed only to find where fields are: decoding
// goes through k8s.io/api types, which keep no positions.
type yamlNode struct {
	root *yamlv3.Node // nil if the document does not parse
}

// fieldLine returns the line of a field path such as
// "items[2].spec.ingress[0].ports[1].endPort" in d (absolute in the file),
// or of its deepest ancestor found; 0 if nothing is found.
func fieldLine(d *doc, field string) int {
	if d == nil || len(d.raw) == 0 {
		return 0
	}
	if d.prefix != "" {
		// d is an item split out of a List: fields below it are relative.
		switch {
		case field == d.prefix:
			field = ""
		case strings.HasPrefix(field, d.prefix+"."):
			field = field[len(d.prefix)+1:]
		}
	}
	d.once.Do(func() {
		d.node = &yamlNode{}
		var n yamlv3.Node
		if err := yamlv3.Unmarshal(d.raw, &n); err == nil && n.Kind == yamlv3.DocumentNode && len(n.Content) == 1 {
			d.node.root = n.Content[0]
		}
	})
	cur := d.node.root
	if cur == nil {
		return 0
	}
	line := cur.Line
	if field == "" {
		return line + d.base - 1
	}
	for _, seg := range splitField(field) {
		var next *yamlv3.Node
		switch {
		case seg.index >= 0:
			if cur.Kind == yamlv3.SequenceNode && seg.index < len(cur.Content) {
				next = cur.Content[seg.index]
			}
		case cur.Kind == yamlv3.MappingNode:
			for i := 0; i+1 < len(cur.Content); i += 2 {
				if cur.Content[i].Value == seg.key {
					line = cur.Content[i].Line
					next = cur.Content[i+1]
					break
				}
			}
		}
		if next == nil {
			break
		}
		cur = next
		if seg.index >= 0 {
			line = cur.Line
		}
	}
	return line + d.base - 1
}

type fieldSeg struct {
	key   string
	index int // -1 for a key
}

// splitField splits "a.b[1].c" into a, b, [1], c.
func splitField(field string) []fieldSeg {
	var out []fieldSeg
	for _, part := range strings.Split(field, ".") {
		for part != "" {
			i := strings.IndexByte(part, '[')
			if i < 0 {
				out = append(out, fieldSeg{key: part, index: -1})
				break
			}
			if i > 0 {
				out = append(out, fieldSeg{key: part[:i], index: -1})
			}
			j := strings.IndexByte(part[i:], ']')
			if j < 0 {
				break
			}
			n, err := strconv.Atoi(part[i+1 : i+j])
			if err != nil {
				break
			}
			out = append(out, fieldSeg{index: n})
			part = part[i+j+1:]
		}
	}
	return out
}
