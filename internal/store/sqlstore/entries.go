package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/trustmesh/trustmesh/internal/store"
)

const entryColumns = `id, spiffe_id, parent_id, selectors, x509_svid_ttl_ms, jwt_svid_ttl_ms,
	dns_names, admin, hint, expires_at, created_at, updated_at, revision`

// CreateEntry implements store.Store.
func (s *Store) CreateEntry(ctx context.Context, e store.Entry) (store.Entry, error) {
	if e.ID == "" {
		return store.Entry{}, errors.New("create entry: missing id")
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	e.CreatedAt, e.UpdatedAt, e.Revision = now, now, 1
	e.Selectors = sortedSelectors(e.Selectors)
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		_, err := s.exec(ctx, tx, `INSERT INTO entries (`+entryColumns+`, unique_key)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			e.ID, e.SPIFFEID, e.ParentID, encodeSelectors(e.Selectors),
			e.X509SVIDTTL.Milliseconds(), e.JWTSVIDTTL.Milliseconds(),
			encodeStrings(e.DNSNames), e.Admin, e.Hint, toMicros(e.ExpiresAt),
			toMicros(e.CreatedAt), toMicros(e.UpdatedAt), e.Revision, entryUniqueKey(e))
		if err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("entry with the same SPIFFE ID, parent ID and selectors: %w", store.ErrAlreadyExists)
			}
			return fmt.Errorf("insert entry: %w", err)
		}
		return s.bumpRevision(ctx, tx)
	})
	if err != nil {
		return store.Entry{}, err
	}
	return e, nil
}

// GetEntry implements store.Store.
func (s *Store) GetEntry(ctx context.Context, id string) (store.Entry, error) {
	return s.getEntry(ctx, s.db, id)
}

func (s *Store) getEntry(ctx context.Context, q querier, id string) (store.Entry, error) {
	rows, err := s.query(ctx, q, `SELECT `+entryColumns+` FROM entries WHERE id = ?`, id)
	if err != nil {
		return store.Entry{}, fmt.Errorf("get entry: %w", err)
	}
	entries, err := scanEntries(rows)
	if err != nil {
		return store.Entry{}, err
	}
	if len(entries) == 0 {
		return store.Entry{}, fmt.Errorf("entry %q: %w", id, store.ErrNotFound)
	}
	return entries[0], nil
}

// maxParentsPerQuery keeps the IN (...) list well below PostgreSQL's bind
// parameter limit; larger parent sets are queried in chunks.
const maxParentsPerQuery = 500

// ListEntries implements store.Store. Entries come ordered by SPIFFE ID,
// then ID, so listings are stable.
func (s *Store) ListEntries(ctx context.Context, f store.EntryFilter) ([]store.Entry, error) {
	if len(f.ParentIDs) <= maxParentsPerQuery {
		return s.listEntries(ctx, f)
	}
	var out []store.Entry
	for start := 0; start < len(f.ParentIDs); start += maxParentsPerQuery {
		chunk := f
		chunk.ParentIDs = f.ParentIDs[start:min(start+maxParentsPerQuery, len(f.ParentIDs))]
		es, err := s.listEntries(ctx, chunk)
		if err != nil {
			return nil, err
		}
		out = append(out, es...)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SPIFFEID != out[j].SPIFFEID {
			return out[i].SPIFFEID < out[j].SPIFFEID
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

func (s *Store) listEntries(ctx context.Context, f store.EntryFilter) ([]store.Entry, error) {
	var (
		where []string
		args  []any
	)
	if f.SPIFFEID != "" {
		where = append(where, "spiffe_id = ?")
		args = append(args, f.SPIFFEID)
	}
	if len(f.ParentIDs) > 0 {
		where = append(where, "parent_id IN (?"+strings.Repeat(", ?", len(f.ParentIDs)-1)+")")
		for _, p := range f.ParentIDs {
			args = append(args, p)
		}
	}
	q := `SELECT ` + entryColumns + ` FROM entries`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY spiffe_id, id"
	rows, err := s.query(ctx, s.db, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list entries: %w", err)
	}
	return scanEntries(rows)
}

// UpdateEntry implements store.Store.
func (s *Store) UpdateEntry(ctx context.Context, e store.Entry) (store.Entry, error) {
	var out store.Entry
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		cur, err := s.getEntry(ctx, tx, e.ID)
		if err != nil {
			return err
		}
		if e.Revision != 0 && e.Revision != cur.Revision {
			return fmt.Errorf("entry %q is at revision %d, not %d: %w", e.ID, cur.Revision, e.Revision, store.ErrConflict)
		}
		e.Selectors = sortedSelectors(e.Selectors)
		e.CreatedAt = cur.CreatedAt
		e.UpdatedAt = time.Now().UTC().Truncate(time.Microsecond)
		e.Revision = cur.Revision + 1
		res, err := s.exec(ctx, tx, `UPDATE entries SET spiffe_id = ?, parent_id = ?, selectors = ?,
			x509_svid_ttl_ms = ?, jwt_svid_ttl_ms = ?, dns_names = ?, admin = ?, hint = ?,
			expires_at = ?, updated_at = ?, revision = ?, unique_key = ?
			WHERE id = ? AND revision = ?`,
			e.SPIFFEID, e.ParentID, encodeSelectors(e.Selectors),
			e.X509SVIDTTL.Milliseconds(), e.JWTSVIDTTL.Milliseconds(),
			encodeStrings(e.DNSNames), e.Admin, e.Hint, toMicros(e.ExpiresAt),
			toMicros(e.UpdatedAt), e.Revision, entryUniqueKey(e), e.ID, cur.Revision)
		if err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("entry with the same SPIFFE ID, parent ID and selectors: %w", store.ErrAlreadyExists)
			}
			return fmt.Errorf("update entry: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("entry %q changed concurrently: %w", e.ID, store.ErrConflict)
		}
		out = e
		return s.bumpRevision(ctx, tx)
	})
	return out, err
}

// DeleteEntry implements store.Store.
func (s *Store) DeleteEntry(ctx context.Context, id string) (store.Entry, error) {
	var out store.Entry
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		cur, err := s.getEntry(ctx, tx, id)
		if err != nil {
			return err
		}
		res, err := s.exec(ctx, tx, `DELETE FROM entries WHERE id = ?`, id)
		if err != nil {
			return fmt.Errorf("delete entry: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("entry %q: %w", id, store.ErrNotFound)
		}
		out = cur
		return s.bumpRevision(ctx, tx)
	})
	return out, err
}

func scanEntries(rows *sql.Rows) ([]store.Entry, error) {
	defer rows.Close()
	var out []store.Entry
	for rows.Next() {
		var (
			e                               store.Entry
			selectors, dnsNames             string
			x509TTL, jwtTTL                 int64
			expiresAt, createdAt, updatedAt int64
		)
		if err := rows.Scan(&e.ID, &e.SPIFFEID, &e.ParentID, &selectors, &x509TTL, &jwtTTL,
			&dnsNames, &e.Admin, &e.Hint, &expiresAt, &createdAt, &updatedAt, &e.Revision); err != nil {
			return nil, fmt.Errorf("scan entry: %w", err)
		}
		var err error
		if e.Selectors, err = decodeSelectors(selectors); err != nil {
			return nil, fmt.Errorf("entry %q: %w", e.ID, err)
		}
		if e.DNSNames, err = decodeStrings(dnsNames); err != nil {
			return nil, fmt.Errorf("entry %q: %w", e.ID, err)
		}
		e.X509SVIDTTL = time.Duration(x509TTL) * time.Millisecond
		e.JWTSVIDTTL = time.Duration(jwtTTL) * time.Millisecond
		e.ExpiresAt, e.CreatedAt, e.UpdatedAt = fromMicros(expiresAt), fromMicros(createdAt), fromMicros(updatedAt)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read entries: %w", err)
	}
	return out, nil
}

func sortedSelectors(in []store.Selector) []store.Selector {
	out := append([]store.Selector(nil), in...)
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}
