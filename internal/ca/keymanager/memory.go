package keymanager

import (
	"context"
	"crypto"
	"fmt"
	"sync"
)

// Memory keeps keys in process memory only: a restart loses them, and with
// them the CA. For tests and throwaway dev servers.
type Memory struct {
	mu   sync.RWMutex
	keys map[string]crypto.Signer
}

// NewMemory returns an empty in-memory key manager.
func NewMemory() *Memory { return &Memory{keys: map[string]crypto.Signer{}} }

// GenerateKey implements KeyManager.
func (m *Memory) GenerateKey(_ context.Context, id string, kt KeyType) (crypto.Signer, error) {
	if err := checkKeyID(id); err != nil {
		return nil, err
	}
	k, err := kt.Generate()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.keys[id] = k
	m.mu.Unlock()
	return k, nil
}

// GetKey implements KeyManager.
func (m *Memory) GetKey(_ context.Context, id string) (crypto.Signer, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	k, ok := m.keys[id]
	if !ok {
		return nil, fmt.Errorf("%q: %w", id, ErrKeyNotFound)
	}
	return k, nil
}
