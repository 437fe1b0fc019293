package dev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// workloadBinaries gives each demo workload its own path to the trustmesh
// binary, so the agent can tell them apart by unix:path. It hard-links
// beside the executable (same filesystem, so no copy: this also works for
// `go run`'s temporary binary), else in the data dir, copying as a last
// resort.
//
// cleanup removes links made outside the data dir.
func workloadBinaries(exe, dataDir string, names []string) (paths map[string]string, cleanup func(), err error) {
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		return nil, nil, err
	}
	inData := filepath.Join(dataDir, "bin")
	if out, err := linkAll(exe, inData, names); err == nil {
		return out, func() {}, nil
	}
	beside := filepath.Join(filepath.Dir(exe), ".trustmesh-dev-bin-"+fmt.Sprint(os.Getpid()))
	out, linkErr := linkAll(exe, beside, names)
	if linkErr == nil {
		return out, func() { os.RemoveAll(beside) }, nil
	}
	os.RemoveAll(beside)
	out = map[string]string{}
	for _, n := range names {
		p := filepath.Join(inData, n, "trustmesh")
		if err := copyFile(exe, p); err != nil {
			return nil, nil, fmt.Errorf("workload binaries: cannot link (%v) or copy: %w", linkErr, err)
		}
		out[n] = p
	}
	return out, func() {}, nil
}

func linkAll(exe, dir string, names []string) (map[string]string, error) {
	out := map[string]string{}
	for _, n := range names {
		p := filepath.Join(dir, n, "trustmesh")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if same(p, exe) {
			out[n] = p
			continue
		}
		_ = os.Remove(p)
		if err := os.Link(exe, p); err != nil {
			return nil, err
		}
		out[n] = p
	}
	return out, nil
}

// same reports whether a and b are the same file (an existing link).
func same(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

func copyFile(src, dst string) error {
	if same(src, dst) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return errors.Join(os.Rename(tmp, dst))
}
