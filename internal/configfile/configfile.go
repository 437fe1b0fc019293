// Package configfile decodes Trustmesh's YAML config files the same way for
// every role: unknown keys are errors, every field-level problem is
// reported (with its line) rather than only the first, and durations are
// parsed late so one bad value does not hide the rest.
package configfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"gopkg.in/yaml.v3"
)

// DecodeErrors are the problems found while decoding (unknown keys, wrong
// types). The value decoded alongside holds everything else, so
// validation can still report the remaining problems.
type DecodeErrors struct{ Errs []error }

func (e *DecodeErrors) Error() string { return errors.Join(e.Errs...).Error() }

// Decode decodes YAML into v strictly. A syntax error is returned alone;
// field-level problems come back as *DecodeErrors with v partly filled. An
// empty document is an empty config.
func Decode(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(v)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		de := &DecodeErrors{}
		for _, e := range te.Errors {
			de.Errs = append(de.Errs, errors.New(e))
		}
		return de
	}
	return fmt.Errorf("config is not valid YAML: %w", err)
}

// Load reads and decodes the file at path (see Decode).
func Load(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return Decode(data, v)
}

// Fatal reports whether err from Decode or Load stops validation (as
// opposed to field-level problems reported alongside the rest).
func Fatal(err error) bool {
	var de *DecodeErrors
	return err != nil && !errors.As(err, &de)
}

// Duration is a duration written as a Go duration string ("24h").
type Duration struct {
	Value time.Duration // used when Raw is empty (configs built in code)
	Raw   string
	Line  int
}

// D returns a Duration for d, for configs built in code.
func D(d time.Duration) Duration { return Duration{Value: d} }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	d.Raw, d.Line = n.Value, n.Line
	if d.Raw == "" {
		d.Raw = "<empty>"
	}
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) {
	if d.Raw != "" {
		return d.Raw, nil
	}
	return d.Value.String(), nil
}

// Parse returns the duration (def when unset), naming key in errors.
func (d Duration) Parse(key string, def time.Duration) (time.Duration, error) {
	if d.Raw == "" {
		if d.Value == 0 {
			return def, nil
		}
		return d.Value, nil
	}
	v, err := time.ParseDuration(d.Raw)
	if err != nil {
		return def, fmt.Errorf("%s (line %d): invalid duration %q: want a value such as \"1h\" or \"90s\"", key, d.Line, d.Raw)
	}
	return v, nil
}

// CheckLogging validates the log_level and log_format values every role
// accepts (already lowercased), returning one error per bad value.
func CheckLogging(level, format string) []error {
	var errs []error
	switch level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: want debug, info, warn or error", level))
	}
	switch format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log_format %q: want text or json", format))
	}
	return errs
}

// CheckHostPort validates a listen or dial address such as 127.0.0.1:8081
// (an empty host means every interface, as net.Listen has it).
func CheckHostPort(key, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err == nil && port == "" {
		err = errors.New("missing port")
	}
	if err != nil {
		return fmt.Errorf("%s %q: %v", key, addr, err)
	}
	return nil
}
