package gateway

import (
	"html/template"
	"net/http"
	"strings"
)

// setPageHeaders are the strict headers on every response the gateway
// writes itself: nothing may be framed, sniffed, cached or referred, and
// the pages run no script.
func setPageHeaders(w http.ResponseWriter, formAction ...string) {
	h := w.Header()
	fa := "'self'"
	if len(formAction) > 0 {
		fa += " " + strings.Join(formAction, " ")
	}
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action "+fa+"; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "interest-cohort=()")
}

var pages = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{.Title}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}button{font-size:1rem;padding:.5rem 1rem}</style>
</head><body><h1>{{.Title}}</h1><p>{{.Message}}</p>
{{if .Form}}<form method="post" action="{{.Form}}"><input type="hidden" name="csrf" value="{{.CSRF}}">{{if .RD}}<input type="hidden" name="rd" value="{{.RD}}">{{end}}<button type="submit">{{.Button}}</button></form>{{end}}
{{if .Link}}<p><a href="{{.Link}}">{{.LinkText}}</a></p>{{end}}
</body></html>
`))

type page struct {
	Title, Message         string
	Form, CSRF, RD, Button string
	Link, LinkText         string
}

func renderPage(w http.ResponseWriter, status int, p page, formAction ...string) {
	setPageHeaders(w, formAction...)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = pages.Execute(w, p)
}

// errorPage says what happened in words a user can act on; the details
// are in the log.
func (g *Gateway) errorPage(w http.ResponseWriter, status int, title, message string) {
	renderPage(w, status, page{Title: title, Message: message})
}
