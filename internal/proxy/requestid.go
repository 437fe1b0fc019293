package proxy

import (
	"crypto/rand"
	"sync"
)

// Request IDs are random (version 4) UUIDs, as github.com/google/uuid
// makes them, from crypto/rand read 16 IDs at a time: a request costs a
// copy and the formatting, and a read of the kernel's generator only every
// 16 requests (per P, through a sync.Pool).
const requestIDBatch = 16

type randBatch struct {
	b   [16 * requestIDBatch]byte
	off int
}

var randBatches = sync.Pool{New: func() any { return &randBatch{off: 16 * requestIDBatch} }}

// newRequestID is a new random UUID in its 36-character text form.
func newRequestID() string {
	rb := randBatches.Get().(*randBatch)
	if rb.off == len(rb.b) {
		_, _ = rand.Read(rb.b[:]) // crypto/rand.Read never fails (it crashes the program instead)
		rb.off = 0
	}
	var u [16]byte
	copy(u[:], rb.b[rb.off:rb.off+16])
	clear(rb.b[rb.off : rb.off+16]) // used bytes do not linger
	rb.off += 16
	randBatches.Put(rb)
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	var s [36]byte
	j := 0
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			s[j] = '-'
			j++
		}
		s[j], s[j+1] = hexDigits[c>>4], hexDigits[c&0xf]
		j += 2
	}
	return string(s[:])
}

const hexDigits = "0123456789abcdef"
