package session

import (
	"context"
	"sync"
	"time"
)

// Memory is a Store in this process's memory: sessions end with it.
type Memory struct {
	now     func() time.Time
	mu      sync.Mutex
	records map[string]Record
	tickets map[string]ticket
}

type ticket struct {
	value     []byte
	expiresAt time.Time
}

// NewMemory returns an empty in-memory store.
func NewMemory(opts Options) *Memory {
	return &Memory{now: opts.now(), records: map[string]Record{}, tickets: map[string]ticket{}}
}

func cloneBytes(b []byte) []byte { return append([]byte(nil), b...) }

func (m *Memory) Create(_ context.Context, r Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.records[r.Key]; ok && m.now().Before(old.ExpiresAt) {
		return ErrExists
	}
	r.Version = 1
	r.Data = cloneBytes(r.Data)
	m.records[r.Key] = r
	return nil
}

func (m *Memory) Get(_ context.Context, key string) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.records[key]
	if !ok || !m.now().Before(r.ExpiresAt) {
		return Record{}, ErrNotFound
	}
	r.Data = cloneBytes(r.Data)
	return r, nil
}

func (m *Memory) Update(_ context.Context, r Record) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.records[r.Key]
	if !ok || !m.now().Before(old.ExpiresAt) {
		return Record{}, ErrNotFound
	}
	if old.Version != r.Version {
		return Record{}, ErrConflict
	}
	r.Version++
	r.Data = cloneBytes(r.Data)
	m.records[r.Key] = r
	out := r
	out.Data = cloneBytes(r.Data)
	return out, nil
}

func (m *Memory) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	delete(m.records, key)
	m.mu.Unlock()
	return nil
}

func (m *Memory) PutTicket(_ context.Context, key string, value []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if t, ok := m.tickets[key]; ok && now.Before(t.expiresAt) {
		return ErrExists
	}
	m.tickets[key] = ticket{value: cloneBytes(value), expiresAt: now.Add(ttl)}
	return nil
}

func (m *Memory) TakeTicket(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tickets[key]
	delete(m.tickets, key)
	if !ok || !m.now().Before(t.expiresAt) {
		return nil, ErrNotFound
	}
	return t.value, nil
}

// Purge drops expired records and tickets.
func (m *Memory) Purge(context.Context) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now, n := m.now(), 0
	for k, r := range m.records {
		if !now.Before(r.ExpiresAt) {
			delete(m.records, k)
			n++
		}
	}
	for k, t := range m.tickets {
		if !now.Before(t.expiresAt) {
			delete(m.tickets, k)
			n++
		}
	}
	return n, nil
}

func (m *Memory) Close() error { return nil }
