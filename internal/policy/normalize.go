package policy

import (
	"errors"
	"strings"
)

// Path normalization errors. A request whose path cannot be normalized is
// denied: there is no safe way to match it.
var (
	ErrPathNUL       = errors.New("path contains an encoded NUL (%00)")
	ErrPathEncoding  = errors.New("path has a malformed percent-encoding")
	ErrPathControl   = errors.New("path contains a control character")
	ErrPathNotOrigin = errors.New("path must start with /")
)

// IsPathError reports whether err is a path normalization error.
func IsPathError(err error) bool {
	return errors.Is(err, ErrPathNUL) || errors.Is(err, ErrPathEncoding) || errors.Is(err, ErrPathControl) || errors.Is(err, ErrPathNotOrigin)
}

// NormalizePath returns the path that policy matches, so that one resource
// cannot be reached under several spellings (/a%64min, //admin,
// /x/../admin, /admin%2Fusers, \admin). In order it:
//
//   - drops the query and fragment;
//   - decodes percent-encoded unreserved characters (RFC 3986 §2.3) and
//     %2F and %5C, and upper-cases the hex digits of every other escape;
//   - turns backslashes into slashes and merges repeated slashes;
//   - removes "." and ".." segments (RFC 3986 §5.2.4);
//
// and rejects an encoded NUL, a malformed escape and raw control
// characters. This is Envoy's normalize_path + merge_slashes with Istio's
// DECODE_AND_MERGE_SLASHES option, the strictest Istio offers. A path that
// is already normal is returned as is, without allocating.
func NormalizePath(p string) (string, error) {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if p == "" {
		return "/", nil
	}
	if p[0] != '/' && p[0] != '\\' && p[0] != '%' {
		return "", ErrPathNotOrigin
	}
	if clean, err := isNormal(p); err != nil {
		return "", err
	} else if clean {
		return p, nil
	}
	// Pass 1: decode and turn backslashes into slashes.
	buf := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", ErrPathEncoding
			}
			d := unhex(p[i+1])<<4 | unhex(p[i+2])
			switch {
			case d == 0:
				return "", ErrPathNUL
			case d == '/' || d == '\\':
				buf = append(buf, '/')
			case isUnreserved(d):
				buf = append(buf, d)
			default:
				buf = append(buf, '%', upperHex(p[i+1]), upperHex(p[i+2]))
			}
			i += 2
		case c == '\\':
			buf = append(buf, '/')
		case c < 0x20 || c == 0x7f:
			return "", ErrPathControl
		default:
			buf = append(buf, c)
		}
	}
	if buf[0] != '/' {
		return "", ErrPathNotOrigin
	}
	return removeDotSegments(buf), nil
}

// isNormal reports whether p needs no change, or the error that rejects it.
func isNormal(p string) (bool, error) {
	clean := true
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c < 0x20 || c == 0x7f:
			return false, ErrPathControl
		case c == '%' || c == '\\':
			clean = false
		case c == '/':
			// "//", "/." at a segment start need work.
			if i+1 < len(p) && (p[i+1] == '/' || p[i+1] == '.') {
				if p[i+1] == '/' || isDotSegment(p[i+1:]) {
					clean = false
				}
			}
		}
	}
	return clean, nil
}

// isDotSegment reports whether s starts with a "." or ".." segment.
func isDotSegment(s string) bool {
	return s == "." || s == ".." || strings.HasPrefix(s, "./") || strings.HasPrefix(s, "../")
}

// removeDotSegments merges slashes and resolves dot segments in a path
// that starts with "/".
func removeDotSegments(b []byte) string {
	out := make([]byte, 0, len(b))
	i := 0
	for i < len(b) {
		// b[i] is '/': skip repeated slashes.
		for i < len(b) && b[i] == '/' {
			i++
		}
		j := i
		for j < len(b) && b[j] != '/' {
			j++
		}
		seg := b[i:j]
		last := j >= len(b)
		switch string(seg) {
		case ".":
			if last {
				out = append(out, '/')
			}
		case "..":
			// Drop the previous segment.
			k := len(out) - 1
			for k >= 0 && out[k] != '/' {
				k--
			}
			if k < 0 {
				k = 0
			}
			out = out[:k]
			if last {
				out = append(out, '/')
			}
		case "":
			if last {
				out = append(out, '/')
			}
		default:
			out = append(out, '/')
			out = append(out, seg...)
		}
		i = j
	}
	if len(out) == 0 {
		return "/"
	}
	return string(out)
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
