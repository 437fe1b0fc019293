package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/store"
)

const maxRequestBody = 1 << 20

// apiError is an error with the status and message a client may see. The
// wrapped cause is logged and audited, never sent.
type apiError struct {
	status int
	public string
	cause  error
	code   string // apiv1.Code*, optional
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return e.public + ": " + e.cause.Error()
	}
	return e.public
}

func (e *apiError) Unwrap() error { return e.cause }

func badRequest(err error) *apiError {
	return &apiError{status: http.StatusBadRequest, public: err.Error()}
}

func forbidden(cause error) *apiError {
	return &apiError{status: http.StatusForbidden, public: "permission denied", cause: cause}
}

func unauthenticated(msg string) *apiError {
	return &apiError{status: http.StatusUnauthorized, public: msg}
}

// storeError maps datastore errors to client-visible ones.
func storeError(err error) *apiError {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return &apiError{status: http.StatusNotFound, public: err.Error()}
	case errors.Is(err, store.ErrAlreadyExists), errors.Is(err, store.ErrConflict):
		return &apiError{status: http.StatusConflict, public: err.Error()}
	case errors.Is(err, store.ErrBanned):
		return errBanned(err)
	}
	return internal(err)
}

func internal(err error) *apiError {
	return &apiError{status: http.StatusInternalServerError, public: "internal error", cause: err}
}

func errBanned(cause error) *apiError {
	return &apiError{status: http.StatusForbidden, public: "agent is banned", cause: cause, code: apiv1.CodeAgentBanned}
}

func asAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	return internal(err)
}

// decodeJSON reads a JSON body strictly: bounded size, unknown fields are
// errors (a typo must not be silently ignored).
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest(fmt.Errorf("invalid request body: %v", err))
	}
	if err := dec.Decode(&struct{}{}); err != io.EOF {
		return badRequest(errors.New("invalid request body: trailing data after the JSON object"))
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, apiv1.Error{Error: e.public, Code: e.code})
}

// statusRecorder captures the status code for metrics.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the real writer (streams
// flush and clear deadlines through it).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func secondsToDuration(what string, s int64) (time.Duration, error) {
	if s < 0 {
		return 0, fmt.Errorf("%s %d is negative", what, s)
	}
	if s > int64((1<<63-1)/time.Second) {
		return 0, fmt.Errorf("%s %d is too large", what, s)
	}
	return time.Duration(s) * time.Second, nil
}

func itoa(i int) string { return strconv.Itoa(i) }
