package dev

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// feed prints decisions as they happen, one readable line each, and keeps
// the combined audit log (every workload's decisions, JSON lines).
type feed struct {
	mu      sync.Mutex
	w       io.Writer
	color   bool
	audit   *os.File
	started bool
	pending []string
}

func newFeed(w io.Writer, color bool, auditPath string) (*feed, error) {
	f, err := os.OpenFile(auditPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return &feed{w: w, color: color, audit: f}, nil
}

// start prints what was held back while the banner was not yet out.
func (f *feed) start() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = true
	for _, l := range f.pending {
		io.WriteString(f.w, l)
	}
	f.pending = nil
}

func (f *feed) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.audit.Close()
}

func (f *feed) print(line string) {
	if f.started {
		io.WriteString(f.w, line)
	} else {
		f.pending = append(f.pending, line)
	}
}

const (
	green = "\x1b[32m"
	red   = "\x1b[31m"
	dim   = "\x1b[2m"
	reset = "\x1b[0m"
)

func (f *feed) paint(code, s string) string {
	if !f.color {
		return s
	}
	return code + s + reset
}

// auditLine is the part of a proxy decision record the feed shows.
type auditLine struct {
	Timestamp       string  `json:"timestamp"`
	SourcePrincipal string  `json:"source_principal"`
	Destination     string  `json:"destination"`
	Protocol        string  `json:"protocol"`
	Method          string  `json:"method"`
	Path            string  `json:"path"`
	Decision        string  `json:"decision"`
	Policy          *string `json:"policy"`
	Rule            *int    `json:"rule"`
	Reason          string  `json:"reason"`
	MTLS            bool    `json:"mtls"`
}

func shortName(id string) string {
	if id == "" {
		return "(plaintext)"
	}
	return id[strings.LastIndexByte(id, '/')+1:]
}

func (f *feed) decision(raw []byte) {
	var a auditLine
	if err := json.Unmarshal(raw, &a); err != nil {
		return
	}
	ts := time.Now()
	if t, err := time.Parse(time.RFC3339Nano, a.Timestamp); err == nil {
		ts = t.Local()
	}
	verdict := f.paint(green, "ALLOW")
	if a.Decision != "allow" {
		verdict = f.paint(red, "DENY ")
	}
	why := a.Reason
	if a.Policy != nil && a.Decision == "allow" {
		why = *a.Policy
		if a.Rule != nil {
			why += fmt.Sprintf(" rule %d", *a.Rule)
		}
	}
	what := a.Method + " " + a.Path
	if a.Protocol == "tcp" {
		what = "TCP connection"
	}
	mtls := "mTLS"
	if !a.MTLS {
		mtls = "plaintext"
	}
	line := fmt.Sprintf("%s  %s  %-9s → %-9s %-24s %-9s %s\n", ts.Format("15:04:05.000"), verdict,
		shortName(a.SourcePrincipal), shortName(a.Destination), what, mtls, f.paint(dim, why))
	f.mu.Lock()
	defer f.mu.Unlock()
	_, _ = f.audit.Write(append(append([]byte{}, raw...), '\n'))
	f.print(line)
}

func (f *feed) plaintext(svc, addr, result string) {
	line := fmt.Sprintf("%s  %s  %-9s → %-9s %-24s %-9s %s\n", time.Now().Format("15:04:05.000"), f.paint(red, "PLAIN"),
		"(probe)", svc, "plaintext to "+addr, "", f.paint(dim, result))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.print(line)
}
