package sqlstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/trustmesh/trustmesh/internal/store"
)

// AddX509Authority implements store.Store.
func (s *Store) AddX509Authority(ctx context.Context, a store.X509Authority) error {
	sum := sha256.Sum256(a.CertDER)
	if a.CreatedAt.IsZero() {
		a.CreatedAt = time.Now()
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := s.exec(ctx, tx, `INSERT INTO x509_authorities (fingerprint, cert_der, not_after, created_at)
			VALUES (?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING`,
			hex.EncodeToString(sum[:]), a.CertDER, toMicros(a.NotAfter), toMicros(a.CreatedAt))
		if err != nil {
			return fmt.Errorf("insert X.509 authority: %w", err)
		}
		return s.bumpSequenceIfChanged(ctx, tx, res)
	})
}

// AddJWTKey implements store.Store.
func (s *Store) AddJWTKey(ctx context.Context, k store.JWTKey) error {
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now()
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := s.exec(ctx, tx, `INSERT INTO jwt_keys (key_id, public_key_der, not_after, created_at)
			VALUES (?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING`,
			k.KeyID, k.PublicKeyDER, toMicros(k.NotAfter), toMicros(k.CreatedAt))
		if err != nil {
			return fmt.Errorf("insert JWT key: %w", err)
		}
		return s.bumpSequenceIfChanged(ctx, tx, res)
	})
}

// FetchBundle implements store.Store.
func (s *Store) FetchBundle(ctx context.Context) (store.Bundle, error) {
	var b store.Bundle
	// One read transaction, so the sequence number matches the contents.
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var seq int64
		if err := s.queryRow(ctx, tx, `SELECT sequence FROM bundle_meta WHERE id = 1`).Scan(&seq); err != nil {
			return fmt.Errorf("read bundle sequence: %w", err)
		}
		b.Sequence = uint64(seq)

		rows, err := s.query(ctx, tx, `SELECT cert_der, not_after, created_at FROM x509_authorities ORDER BY created_at, fingerprint`)
		if err != nil {
			return fmt.Errorf("list X.509 authorities: %w", err)
		}
		for rows.Next() {
			var a store.X509Authority
			var notAfter, createdAt int64
			if err := rows.Scan(&a.CertDER, &notAfter, &createdAt); err != nil {
				rows.Close()
				return fmt.Errorf("scan X.509 authority: %w", err)
			}
			a.NotAfter, a.CreatedAt = fromMicros(notAfter), fromMicros(createdAt)
			b.X509Authorities = append(b.X509Authorities, a)
		}
		if err := rows.Close(); err != nil {
			return err
		}

		rows, err = s.query(ctx, tx, `SELECT key_id, public_key_der, not_after, created_at FROM jwt_keys ORDER BY created_at, key_id`)
		if err != nil {
			return fmt.Errorf("list JWT keys: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var k store.JWTKey
			var notAfter, createdAt int64
			if err := rows.Scan(&k.KeyID, &k.PublicKeyDER, &notAfter, &createdAt); err != nil {
				return fmt.Errorf("scan JWT key: %w", err)
			}
			k.NotAfter, k.CreatedAt = fromMicros(notAfter), fromMicros(createdAt)
			b.JWTKeys = append(b.JWTKeys, k)
		}
		return rows.Err()
	})
	return b, err
}

// PruneBundle implements store.Store.
func (s *Store) PruneBundle(ctx context.Context, expiredBefore time.Time) (int64, error) {
	var total int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		total = 0
		for _, q := range []string{
			`DELETE FROM x509_authorities WHERE not_after < ?`,
			`DELETE FROM jwt_keys WHERE not_after < ?`,
		} {
			res, err := s.exec(ctx, tx, q, toMicros(expiredBefore))
			if err != nil {
				return fmt.Errorf("prune bundle: %w", err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			total += n
		}
		if total > 0 {
			return s.bumpSequence(ctx, tx)
		}
		return nil
	})
	return total, err
}

func (s *Store) bumpSequenceIfChanged(ctx context.Context, tx *sql.Tx, res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return s.bumpSequence(ctx, tx)
}

func (s *Store) bumpSequence(ctx context.Context, tx *sql.Tx) error {
	if _, err := s.exec(ctx, tx, `UPDATE bundle_meta SET sequence = sequence + 1 WHERE id = 1`); err != nil {
		return fmt.Errorf("bump bundle sequence: %w", err)
	}
	return nil
}

// Revisions implements store.Store.
func (s *Store) Revisions(ctx context.Context) (int64, uint64, error) {
	var reg, seq int64
	err := s.queryRow(ctx, s.db, `SELECT r.revision, b.sequence FROM registry_meta r, bundle_meta b WHERE r.id = 1 AND b.id = 1`).Scan(&reg, &seq)
	if err != nil {
		return 0, 0, fmt.Errorf("read revisions: %w", err)
	}
	return reg, uint64(seq), nil
}

func (s *Store) bumpRevision(ctx context.Context, tx *sql.Tx) error {
	if _, err := s.exec(ctx, tx, `UPDATE registry_meta SET revision = revision + 1 WHERE id = 1`); err != nil {
		return fmt.Errorf("bump registry revision: %w", err)
	}
	return nil
}
