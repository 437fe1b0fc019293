package session

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Store in Redis: gateway replicas that share it share their
// sessions. Records are hashes {v: version, e: expiry (Unix ms), d: data}
// with a TTL; updates are compare-and-swap scripts, so two replicas never
// overwrite each other's changes. Expiry is also checked against the
// store's clock, so it can be tested without waiting.
type Redis struct {
	c   *redis.Client
	now func() time.Time
}

const (
	redisSessionPrefix = "trustmesh:gateway:session:"
	redisTicketPrefix  = "trustmesh:gateway:ticket:"
)

var (
	redisCreate = redis.NewScript(`
local e = redis.call('HGET', KEYS[1], 'e')
if e and tonumber(e) > tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', '1', 'e', ARGV[2], 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1`)
	redisUpdate = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'v', 'e')
if not cur[1] or tonumber(cur[2]) <= tonumber(ARGV[4]) then return -1 end
if cur[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[5], 'e', ARGV[3], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1`)
	redisPutTicket = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and struct.unpack('>I8', cur) > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1`)
)

// OpenRedis connects to the Redis a redis:// or rediss:// URL names.
func OpenRedis(ctx context.Context, spec string, opts Options) (*Redis, error) {
	o, err := redis.ParseURL(spec)
	if err != nil {
		return nil, fmt.Errorf("session store %s: %w", redactURL(spec), err)
	}
	o.DialTimeout = 5 * time.Second
	o.ReadTimeout = 3 * time.Second
	o.WriteTimeout = 3 * time.Second
	c := redis.NewClient(o)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("session store %s: %w", redactURL(spec), err)
	}
	return &Redis{c: c, now: opts.now()}, nil
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// ttlMS is the TTL Redis gets: at least a millisecond.
func (s *Redis) ttlMS(exp time.Time) int64 {
	d := exp.Sub(s.now()).Milliseconds()
	if d < 1 {
		d = 1
	}
	return d
}

func (s *Redis) Create(ctx context.Context, r Record) error {
	n, err := redisCreate.Run(ctx, s.c, []string{redisSessionPrefix + r.Key},
		r.Data, ms(r.ExpiresAt), ms(s.now()), s.ttlMS(r.ExpiresAt)).Int()
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	if n == 0 {
		return ErrExists
	}
	return nil
}

func (s *Redis) Get(ctx context.Context, key string) (Record, error) {
	vals, err := s.c.HMGet(ctx, redisSessionPrefix+key, "v", "e", "d").Result()
	if err != nil {
		return Record{}, fmt.Errorf("get session: %w", err)
	}
	v, okV := vals[0].(string)
	e, okE := vals[1].(string)
	d, okD := vals[2].(string)
	if !okV || !okE || !okD {
		return Record{}, ErrNotFound
	}
	ver, err1 := strconv.ParseInt(v, 10, 64)
	exp, err2 := strconv.ParseInt(e, 10, 64)
	if err1 != nil || err2 != nil {
		return Record{}, fmt.Errorf("get session: malformed record")
	}
	r := Record{Key: key, Version: ver, ExpiresAt: time.UnixMilli(exp), Data: []byte(d)}
	if !s.now().Before(r.ExpiresAt) {
		return Record{}, ErrNotFound
	}
	return r, nil
}

func (s *Redis) Update(ctx context.Context, r Record) (Record, error) {
	n, err := redisUpdate.Run(ctx, s.c, []string{redisSessionPrefix + r.Key},
		strconv.FormatInt(r.Version, 10), r.Data, ms(r.ExpiresAt), ms(s.now()),
		strconv.FormatInt(r.Version+1, 10), s.ttlMS(r.ExpiresAt)).Int()
	if err != nil {
		return Record{}, fmt.Errorf("update session: %w", err)
	}
	switch n {
	case -1:
		return Record{}, ErrNotFound
	case 0:
		return Record{}, ErrConflict
	}
	r.Version++
	r.ExpiresAt = time.UnixMilli(ms(r.ExpiresAt))
	return r, nil
}

func (s *Redis) Delete(ctx context.Context, key string) error {
	if err := s.c.Del(ctx, redisSessionPrefix+key).Err(); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

// Tickets are stored as 8 bytes of expiry (Unix ms, big-endian) and the
// value.
func (s *Redis) PutTicket(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	exp := s.now().Add(ttl)
	buf := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(value)), uint64(ms(exp)))
	buf = append(buf, value...)
	n, err := redisPutTicket.Run(ctx, s.c, []string{redisTicketPrefix + key}, buf, ms(s.now()), s.ttlMS(exp)).Int()
	if err != nil {
		return fmt.Errorf("put ticket: %w", err)
	}
	if n == 0 {
		return ErrExists
	}
	return nil
}

func (s *Redis) TakeTicket(ctx context.Context, key string) ([]byte, error) {
	b, err := s.c.GetDel(ctx, redisTicketPrefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("take ticket: %w", err)
	}
	if len(b) < 8 || int64(binary.BigEndian.Uint64(b)) <= ms(s.now()) {
		return nil, ErrNotFound
	}
	return b[8:], nil
}

func (s *Redis) Close() error { return s.c.Close() }
