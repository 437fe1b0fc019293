package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/trustmesh/trustmesh/internal/store"
)

const agentColumns = `spiffe_id, attestation_type, selectors, cert_serial, cert_not_after, banned, created_at, updated_at, prev_cert_serial`

// AttestAgent implements store.Store. The upsert's WHERE clause keeps a
// banned row untouched even if the ban lands between our read and write.
func (s *Store) AttestAgent(ctx context.Context, a store.Agent, joinTokenID string) (store.Agent, error) {
	now := time.Now().UTC().Truncate(time.Microsecond)
	a.Selectors = sortedSelectors(a.Selectors)
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if joinTokenID != "" {
			res, err := s.exec(ctx, tx, `DELETE FROM join_tokens WHERE id = ?`, joinTokenID)
			if err != nil {
				return fmt.Errorf("consume join token: %w", err)
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return fmt.Errorf("join token %q: %w", joinTokenID, store.ErrNotFound)
			}
		}
		res, err := s.exec(ctx, tx, `INSERT INTO agents (`+agentColumns+`)
			VALUES (?, ?, ?, ?, ?, FALSE, ?, ?, '')
			ON CONFLICT (spiffe_id) DO UPDATE SET
				attestation_type = excluded.attestation_type,
				selectors = excluded.selectors,
				cert_serial = excluded.cert_serial,
				cert_not_after = excluded.cert_not_after,
				prev_cert_serial = '',
				updated_at = excluded.updated_at
			WHERE agents.banned = FALSE`,
			a.SPIFFEID, a.AttestationType, encodeSelectors(a.Selectors), a.CertSerial,
			toMicros(a.CertNotAfter), toMicros(now), toMicros(now))
		if err != nil {
			return fmt.Errorf("upsert agent: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("upsert agent: %w", err)
		} else if n == 0 {
			return fmt.Errorf("agent %q: %w", a.SPIFFEID, store.ErrBanned)
		}
		return s.bumpRevision(ctx, tx) // its selectors may match other node aliases now
	})
	if err != nil {
		return store.Agent{}, err
	}
	return s.GetAgent(ctx, a.SPIFFEID)
}

// GetAgent implements store.Store.
func (s *Store) GetAgent(ctx context.Context, spiffeID string) (store.Agent, error) {
	return s.getAgent(ctx, s.db, spiffeID)
}

func (s *Store) getAgent(ctx context.Context, q querier, spiffeID string) (store.Agent, error) {
	rows, err := s.query(ctx, q, `SELECT `+agentColumns+` FROM agents WHERE spiffe_id = ?`, spiffeID)
	if err != nil {
		return store.Agent{}, fmt.Errorf("get agent: %w", err)
	}
	agents, err := scanAgents(rows)
	if err != nil {
		return store.Agent{}, err
	}
	if len(agents) == 0 {
		return store.Agent{}, fmt.Errorf("agent %q: %w", spiffeID, store.ErrNotFound)
	}
	return agents[0], nil
}

// ListAgents implements store.Store.
func (s *Store) ListAgents(ctx context.Context) ([]store.Agent, error) {
	rows, err := s.query(ctx, s.db, `SELECT `+agentColumns+` FROM agents ORDER BY spiffe_id`)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return scanAgents(rows)
}

// RenewAgentCert implements store.Store.
func (s *Store) RenewAgentCert(ctx context.Context, spiffeID, presentedSerial, newSerial string, notAfter time.Time) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		cur, err := s.getAgent(ctx, tx, spiffeID)
		if err != nil {
			return err
		}
		// The certificate the agent is known to hold stays valid: the one it
		// renewed with if that was current, else the still-pending previous.
		keep := cur.PrevCertSerial
		switch {
		case cur.Banned:
			return fmt.Errorf("agent %q: %w", spiffeID, store.ErrBanned)
		case presentedSerial == "":
			return fmt.Errorf("agent %q: no certificate presented: %w", spiffeID, store.ErrConflict)
		case presentedSerial == cur.CertSerial:
			keep = presentedSerial
		case presentedSerial != cur.PrevCertSerial:
			return fmt.Errorf("agent %q presented a superseded certificate: %w", spiffeID, store.ErrConflict)
		}
		res, err := s.exec(ctx, tx, `UPDATE agents SET cert_serial = ?, prev_cert_serial = ?, cert_not_after = ?, updated_at = ?
			WHERE spiffe_id = ? AND cert_serial = ? AND banned = FALSE`,
			newSerial, keep, toMicros(notAfter), toMicros(time.Now()), spiffeID, cur.CertSerial)
		if err != nil {
			return fmt.Errorf("renew agent: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("agent %q changed concurrently: %w", spiffeID, store.ErrConflict)
		}
		return nil
	})
}

// ConfirmAgentCert implements store.Store.
func (s *Store) ConfirmAgentCert(ctx context.Context, spiffeID, serial string) error {
	_, err := s.exec(ctx, s.db, `UPDATE agents SET prev_cert_serial = '' WHERE spiffe_id = ? AND cert_serial = ? AND prev_cert_serial <> ''`,
		spiffeID, serial)
	if err != nil {
		return fmt.Errorf("confirm agent certificate: %w", err)
	}
	return nil
}

// BanAgent implements store.Store.
func (s *Store) BanAgent(ctx context.Context, spiffeID string) (store.Agent, error) {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := s.exec(ctx, tx, `UPDATE agents SET banned = TRUE, cert_serial = '', prev_cert_serial = '', updated_at = ? WHERE spiffe_id = ?`,
			toMicros(time.Now()), spiffeID)
		if err != nil {
			return fmt.Errorf("ban agent: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("agent %q: %w", spiffeID, store.ErrNotFound)
		}
		return s.bumpRevision(ctx, tx)
	})
	if err != nil {
		return store.Agent{}, err
	}
	return s.GetAgent(ctx, spiffeID)
}

// DeleteAgent implements store.Store.
func (s *Store) DeleteAgent(ctx context.Context, spiffeID string) (store.Agent, error) {
	var out store.Agent
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		cur, err := s.getAgent(ctx, tx, spiffeID)
		if err != nil {
			return err
		}
		if _, err := s.exec(ctx, tx, `DELETE FROM agents WHERE spiffe_id = ?`, spiffeID); err != nil {
			return fmt.Errorf("delete agent: %w", err)
		}
		out = cur
		return s.bumpRevision(ctx, tx)
	})
	return out, err
}

func scanAgents(rows *sql.Rows) ([]store.Agent, error) {
	defer rows.Close()
	var out []store.Agent
	for rows.Next() {
		var (
			a                              store.Agent
			selectors                      string
			notAfter, createdAt, updatedAt int64
		)
		if err := rows.Scan(&a.SPIFFEID, &a.AttestationType, &selectors, &a.CertSerial, &notAfter,
			&a.Banned, &createdAt, &updatedAt, &a.PrevCertSerial); err != nil {
			return nil, fmt.Errorf("scan agent: %w", err)
		}
		var err error
		if a.Selectors, err = decodeSelectors(selectors); err != nil {
			return nil, fmt.Errorf("agent %q: %w", a.SPIFFEID, err)
		}
		a.CertNotAfter, a.CreatedAt, a.UpdatedAt = fromMicros(notAfter), fromMicros(createdAt), fromMicros(updatedAt)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read agents: %w", err)
	}
	return out, nil
}

func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
