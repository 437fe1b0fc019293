package ca

import "time"

// SPIRE's rotation schedule: a successor is prepared (and published in the
// bundle) once half the current authority's life has passed, and activated
// when a sixth of its life remains, so relying parties have had most of
// the authority's life to fetch the new bundle before it signs anything.
const (
	preparationDivisor = 2
	preparationCap     = 30 * 24 * time.Hour
	activationDivisor  = 6
	activationCap      = 7 * 24 * time.Hour
)

// PreparationTime is when a successor to an authority valid over
// [notBefore, notAfter] is prepared.
func PreparationTime(notBefore, notAfter time.Time) time.Time {
	return notAfter.Add(-min(notAfter.Sub(notBefore)/preparationDivisor, preparationCap))
}

// ActivationTime is when that successor takes over.
func ActivationTime(notBefore, notAfter time.Time) time.Time {
	return notAfter.Add(-min(notAfter.Sub(notBefore)/activationDivisor, activationCap))
}

type slotStatus string

const (
	statusActive   slotStatus = "active"
	statusPrepared slotStatus = "prepared"
	statusOld      slotStatus = "old"
)

var slotIDs = [2]string{"A", "B"}

// slot holds one authority (an X.509 CA or a JWT key) in one of the two
// rotation slots.
type slot[T any] struct {
	ID        string
	Status    slotStatus
	NotBefore time.Time
	NotAfter  time.Time
	Value     T
}

// slotPair is the two-slot rotation state: at most one active authority
// and one prepared successor (or the retired predecessor).
type slotPair[T any] [2]*slot[T]

func (p *slotPair[T]) with(s slotStatus) *slot[T] {
	for _, sl := range p {
		if sl != nil && sl.Status == s {
			return sl
		}
	}
	return nil
}

// freeSlot returns the slot ID to prepare into: the one not active.
func (p *slotPair[T]) freeSlot() (int, string) {
	for i, sl := range p {
		if sl == nil || sl.Status != statusActive {
			return i, slotIDs[i]
		}
	}
	return 0, slotIDs[0] // unreachable: two active slots are never recorded
}

// step advances the rotation at time now. prepare creates (and publishes)
// a new authority for a slot ID. It reports whether anything changed.
func (p *slotPair[T]) step(now time.Time, prepare func(slotID string) (*slot[T], error)) (changed bool, err error) {
	cur, next := p.with(statusActive), p.with(statusPrepared)
	if cur != nil && !now.Before(cur.NotAfter) { // expired while we were down
		cur.Status, cur, changed = statusOld, nil, true
	}
	if next != nil && !now.Before(next.NotAfter) {
		next.Status, next, changed = statusOld, nil, true
	}
	prepareInFree := func() (*slot[T], error) {
		i, id := p.freeSlot()
		sl, err := prepare(id)
		if err != nil {
			return nil, err
		}
		sl.ID, sl.Status = id, statusPrepared
		p[i] = sl
		changed = true
		return sl, nil
	}
	if cur == nil {
		if next == nil {
			if next, err = prepareInFree(); err != nil {
				return changed, err
			}
		}
		next.Status, cur, next, changed = statusActive, next, nil, true
	}
	if next == nil && !now.Before(PreparationTime(cur.NotBefore, cur.NotAfter)) {
		// A successor prepared now is published now and activated no
		// earlier than the next step, even if activation is already due
		// (the server was down): it is in the bundle before it signs.
		_, err = prepareInFree()
		return changed, err
	}
	if next != nil && !now.Before(ActivationTime(cur.NotBefore, cur.NotAfter)) {
		cur.Status, next.Status, changed = statusOld, statusActive, true
	}
	return changed, nil
}
