// Package sessiontest is the contract every session.Store must meet. Each
// implementation's tests call Run with a constructor for a fresh, empty
// store that uses the given clock; the same assertions then hold for
// memory, SQLite and Redis.
package sessiontest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trustmesh/trustmesh/internal/gateway/session"
)

// Clock is a settable clock, safe for concurrent use.
type Clock struct{ ns atomic.Int64 }

// NewClock starts at t.
func NewClock(t time.Time) *Clock {
	c := &Clock{}
	c.ns.Store(t.UnixNano())
	return c
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time { return time.Unix(0, c.ns.Load()) }

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// NewStore returns a fresh, empty store using clock. The suite closes it.
type NewStore func(t *testing.T, clock func() time.Time) session.Store

// Run runs the contract suite.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s session.Store, c *Clock)
	}{
		{"CreateGet", testCreateGet},
		{"CreateDuplicate", testCreateDuplicate},
		{"UpdateCompareAndSwap", testUpdateCAS},
		{"UpdateConcurrentOneWins", testUpdateConcurrent},
		{"UpdateGone", testUpdateGone},
		{"Delete", testDelete},
		{"Expiry", testExpiry},
		{"ExpiryExtendedByUpdate", testExpiryExtended},
		{"TicketSingleUse", testTicketSingleUse},
		{"TicketExclusive", testTicketExclusive},
		{"TicketExpiry", testTicketExpiry},
		{"TicketConcurrentTakeOnce", testTicketConcurrentTake},
		{"BinaryData", testBinaryData},
		{"EmptyData", testEmptyData},
		{"Purge", testPurge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Millisecond-aligned: Redis keeps expiry in milliseconds.
			c := NewClock(time.Now().Truncate(time.Millisecond))
			s := newStore(t, c.Now)
			t.Cleanup(func() { s.Close() })
			tc.fn(t, s, c)
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

var seq atomic.Int64

func key(t *testing.T) string {
	return fmt.Sprintf("k-%d-%d", time.Now().UnixNano(), seq.Add(1))
}

func rec(t *testing.T, c *Clock, data string) session.Record {
	return session.Record{Key: key(t), ExpiresAt: c.Now().Add(time.Hour), Data: []byte(data)}
}

func sameTime(a, b time.Time) bool {
	d := a.Sub(b)
	return d > -time.Millisecond && d < time.Millisecond
}

func testCreateGet(t *testing.T, s session.Store, c *Clock) {
	r := rec(t, c, "hello")
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx(t), r.Key)
	if err != nil {
		t.Fatal(err)
	}
	if got.Key != r.Key || got.Version != 1 || string(got.Data) != "hello" || !sameTime(got.ExpiresAt, r.ExpiresAt) {
		t.Fatalf("got %+v, want %+v at version 1", got, r)
	}
	if _, err := s.Get(ctx(t), "absent"); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("absent: %v, want ErrNotFound", err)
	}
}

func testCreateDuplicate(t *testing.T, s session.Store, c *Clock) {
	r := rec(t, c, "one")
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	r2 := r
	r2.Data = []byte("two")
	if err := s.Create(ctx(t), r2); !errors.Is(err, session.ErrExists) {
		t.Fatalf("duplicate create: %v, want ErrExists", err)
	}
	got, _ := s.Get(ctx(t), r.Key)
	if string(got.Data) != "one" {
		t.Fatalf("duplicate create overwrote the record: %q", got.Data)
	}
}

func testUpdateCAS(t *testing.T, s session.Store, c *Clock) {
	r := rec(t, c, "v1")
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	cur, _ := s.Get(ctx(t), r.Key)
	cur.Data = []byte("v2")
	next, err := s.Update(ctx(t), cur)
	if err != nil {
		t.Fatal(err)
	}
	if next.Version != 2 {
		t.Fatalf("version after update %d, want 2", next.Version)
	}
	// A writer still holding version 1 loses.
	stale := cur
	stale.Data = []byte("stale")
	if _, err := s.Update(ctx(t), stale); !errors.Is(err, session.ErrConflict) {
		t.Fatalf("stale update: %v, want ErrConflict", err)
	}
	got, _ := s.Get(ctx(t), r.Key)
	if string(got.Data) != "v2" || got.Version != 2 {
		t.Fatalf("got %q at %d, want v2 at 2", got.Data, got.Version)
	}
	next.Data = []byte("v3")
	if n3, err := s.Update(ctx(t), next); err != nil || n3.Version != 3 {
		t.Fatalf("update from the returned record: %v %+v", err, n3)
	}
}

func testUpdateConcurrent(t *testing.T, s session.Store, c *Clock) {
	r := rec(t, c, "start")
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	cur, _ := s.Get(ctx(t), r.Key)
	const n = 16
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := cur
			u.Data = []byte(fmt.Sprintf("writer-%d", i))
			_, err := s.Update(context.Background(), u)
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, session.ErrConflict):
			default:
				t.Errorf("update: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent updates from one version succeeded, want exactly 1", wins.Load())
	}
}

func testUpdateGone(t *testing.T, s session.Store, c *Clock) {
	r := rec(t, c, "x")
	r.Version = 1
	if _, err := s.Update(ctx(t), r); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("update of an absent record: %v, want ErrNotFound", err)
	}
}

func testDelete(t *testing.T, s session.Store, c *Clock) {
	r := rec(t, c, "x")
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx(t), r.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx(t), r.Key); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.Delete(ctx(t), r.Key); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	// The key is free again.
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatalf("create after delete: %v", err)
	}
}

func testExpiry(t *testing.T, s session.Store, c *Clock) {
	r := rec(t, c, "x")
	r.ExpiresAt = c.Now().Add(time.Minute)
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	c.Advance(59 * time.Second)
	if _, err := s.Get(ctx(t), r.Key); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	c.Advance(time.Second)
	if _, err := s.Get(ctx(t), r.Key); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("at expiry: %v, want ErrNotFound", err)
	}
	cur := r
	cur.Version = 1
	if _, err := s.Update(ctx(t), cur); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("update of an expired record: %v, want ErrNotFound", err)
	}
	// An expired key can be created anew.
	r.ExpiresAt = c.Now().Add(time.Minute)
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatalf("create over an expired record: %v", err)
	}
}

func testExpiryExtended(t *testing.T, s session.Store, c *Clock) {
	r := rec(t, c, "x")
	r.ExpiresAt = c.Now().Add(time.Minute)
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	cur, _ := s.Get(ctx(t), r.Key)
	c.Advance(50 * time.Second)
	cur.ExpiresAt = c.Now().Add(time.Minute)
	if _, err := s.Update(ctx(t), cur); err != nil {
		t.Fatal(err)
	}
	c.Advance(50 * time.Second)
	if _, err := s.Get(ctx(t), r.Key); err != nil {
		t.Fatalf("an updated expiry must hold: %v", err)
	}
}

func testTicketSingleUse(t *testing.T, s session.Store, c *Clock) {
	k := key(t)
	if err := s.PutTicket(ctx(t), k, []byte("state"), time.Minute); err != nil {
		t.Fatal(err)
	}
	v, err := s.TakeTicket(ctx(t), k)
	if err != nil || string(v) != "state" {
		t.Fatalf("take: %q, %v", v, err)
	}
	if _, err := s.TakeTicket(ctx(t), k); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("second take: %v, want ErrNotFound", err)
	}
}

func testTicketExclusive(t *testing.T, s session.Store, c *Clock) {
	k := key(t)
	if err := s.PutTicket(ctx(t), k, []byte("a"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTicket(ctx(t), k, []byte("b"), time.Minute); !errors.Is(err, session.ErrExists) {
		t.Fatalf("second put: %v, want ErrExists", err)
	}
	if v, _ := s.TakeTicket(ctx(t), k); string(v) != "a" {
		t.Fatalf("the first ticket must stay: %q", v)
	}
	if err := s.PutTicket(ctx(t), k, []byte("c"), time.Minute); err != nil {
		t.Fatalf("put after take: %v", err)
	}
}

func testTicketExpiry(t *testing.T, s session.Store, c *Clock) {
	k := key(t)
	if err := s.PutTicket(ctx(t), k, []byte("a"), time.Minute); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Minute)
	if err := s.PutTicket(ctx(t), k, []byte("b"), time.Minute); err != nil {
		t.Fatalf("put over an expired ticket: %v", err)
	}
	c.Advance(time.Minute)
	if _, err := s.TakeTicket(ctx(t), k); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("take of an expired ticket: %v, want ErrNotFound", err)
	}
}

func testTicketConcurrentTake(t *testing.T, s session.Store, c *Clock) {
	k := key(t)
	if err := s.PutTicket(ctx(t), k, []byte("once"), time.Minute); err != nil {
		t.Fatal(err)
	}
	var got atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.TakeTicket(context.Background(), k); err == nil {
				got.Add(1)
			} else if !errors.Is(err, session.ErrNotFound) {
				t.Errorf("take: %v", err)
			}
		}()
	}
	wg.Wait()
	if got.Load() != 1 {
		t.Fatalf("a ticket was taken %d times, want once", got.Load())
	}
}

// testEmptyData: a record may carry no data (a mere marker), nil or empty
// alike, and updates may empty it.
func testEmptyData(t *testing.T, s session.Store, c *Clock) {
	for _, data := range [][]byte{nil, {}} {
		r := rec(t, c, "")
		r.Data = data
		if err := s.Create(ctx(t), r); err != nil {
			t.Fatalf("create with data %#v: %v", data, err)
		}
		got, err := s.Get(ctx(t), r.Key)
		if err != nil || len(got.Data) != 0 {
			t.Fatalf("get: %v %v", got.Data, err)
		}
		got.Data = []byte("x")
		if got, err = s.Update(ctx(t), got); err != nil {
			t.Fatal(err)
		}
		got.Data = data
		if _, err := s.Update(ctx(t), got); err != nil {
			t.Fatalf("update to data %#v: %v", data, err)
		}
	}
}

func testBinaryData(t *testing.T, s session.Store, c *Clock) {
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	r := rec(t, c, "")
	r.Data = data
	if err := s.Create(ctx(t), r); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx(t), r.Key)
	if err != nil || !bytes.Equal(got.Data, data) {
		t.Fatalf("binary data did not round-trip: %v", err)
	}
	k := key(t)
	if err := s.PutTicket(ctx(t), k, []byte{0, 1, 2, 255}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if v, err := s.TakeTicket(ctx(t), k); err != nil || !bytes.Equal(v, []byte{0, 1, 2, 255}) {
		t.Fatalf("binary ticket: %v %v", v, err)
	}
}

func testPurge(t *testing.T, s session.Store, c *Clock) {
	p, ok := s.(session.Purger)
	if !ok {
		t.Skip("the store expires records itself")
	}
	live, dead := rec(t, c, "live"), rec(t, c, "dead")
	dead.ExpiresAt = c.Now().Add(time.Second)
	for _, r := range []session.Record{live, dead} {
		if err := s.Create(ctx(t), r); err != nil {
			t.Fatal(err)
		}
	}
	c.Advance(2 * time.Second)
	n, err := p.Purge(ctx(t))
	if err != nil || n < 1 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	if _, err := s.Get(ctx(t), live.Key); err != nil {
		t.Fatalf("purge removed a live record: %v", err)
	}
}
