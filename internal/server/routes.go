package server

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/trustmesh/trustmesh/internal/audit"
)

// request is what a handler gets besides the HTTP request: the
// authenticated caller and a place to name the operation's target for the
// audit record.
type request struct {
	caller caller
	target string
	attrs  []slog.Attr
}

type handler func(w http.ResponseWriter, r *http.Request, req *request) error

type authenticator func(r *http.Request) (caller, *apiError)

// route wires one operation: authentication, the handler, one audit record
// for the outcome, metrics and logging. Failures are answered with a
// client-safe message; the cause goes to the log and the audit trail.
func (s *Server) route(mux *http.ServeMux, pattern, api, op string, auth authenticator, h handler) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		req := &request{}
		var err error
		if auth != nil {
			c, aerr := auth(r)
			req.caller = c
			if aerr != nil {
				err = aerr
				s.metrics.Denials.WithLabelValues(api, op).Inc()
			}
		}
		if err == nil {
			err = h(rec, r, req)
		}
		outcome, reason := audit.Success, ""
		if err != nil {
			ae := asAPIError(err)
			writeError(rec, ae)
			reason = ae.Error()
			outcome = audit.Failure
			if ae.status == http.StatusUnauthorized || ae.status == http.StatusForbidden {
				outcome = audit.Denied
			}
			level := slog.LevelInfo
			if ae.status >= 500 {
				level = slog.LevelError
			}
			s.log.Log(r.Context(), level, "request refused", "api", api, "operation", op,
				"actor", req.caller.actor(), "status", ae.status, "reason", reason)
		}
		s.audit.Record(r.Context(), audit.Event{
			Actor: req.caller.actor(), Operation: op, Target: req.target,
			Outcome: outcome, Reason: reason, Attrs: req.attrs,
		})
		s.metrics.APILatency.WithLabelValues(api, op, itoa(rec.status)).Observe(time.Since(start).Seconds())
	})
}
