package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/trustmesh/trustmesh/internal/store"
)

// CreateJoinToken implements store.Store.
func (s *Store) CreateJoinToken(ctx context.Context, t store.JoinToken) error {
	if t.CreatedAt.IsZero() {
		t.CreatedAt = time.Now()
	}
	_, err := s.exec(ctx, s.db, `INSERT INTO join_tokens (id, secret_hash, expires_at, created_at) VALUES (?, ?, ?, ?)`,
		t.ID, t.SecretHash, toMicros(t.ExpiresAt), toMicros(t.CreatedAt))
	if err != nil {
		if isUniqueViolation(err) {
			return fmt.Errorf("join token %q: %w", t.ID, store.ErrAlreadyExists)
		}
		return fmt.Errorf("insert join token: %w", err)
	}
	return nil
}

// GetJoinToken implements store.Store.
func (s *Store) GetJoinToken(ctx context.Context, id string) (store.JoinToken, error) {
	t := store.JoinToken{ID: id}
	var expiresAt, createdAt int64
	err := s.queryRow(ctx, s.db, `SELECT secret_hash, expires_at, created_at FROM join_tokens WHERE id = ?`, id).
		Scan(&t.SecretHash, &expiresAt, &createdAt)
	if err != nil {
		if isNoRows(err) {
			return store.JoinToken{}, fmt.Errorf("join token %q: %w", id, store.ErrNotFound)
		}
		return store.JoinToken{}, fmt.Errorf("get join token: %w", err)
	}
	t.ExpiresAt, t.CreatedAt = fromMicros(expiresAt), fromMicros(createdAt)
	return t, nil
}

// DeleteJoinToken implements store.Store.
func (s *Store) DeleteJoinToken(ctx context.Context, id string) error {
	res, err := s.exec(ctx, s.db, `DELETE FROM join_tokens WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete join token: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete join token: %w", err)
	}
	if n != 1 {
		return fmt.Errorf("join token %q: %w", id, store.ErrNotFound)
	}
	return nil
}

// PruneJoinTokens implements store.Store.
func (s *Store) PruneJoinTokens(ctx context.Context, expiredBefore time.Time) (int64, error) {
	res, err := s.exec(ctx, s.db, `DELETE FROM join_tokens WHERE expires_at < ?`, toMicros(expiredBefore))
	if err != nil {
		return 0, fmt.Errorf("prune join tokens: %w", err)
	}
	return res.RowsAffected()
}
