// Package keymanagertest is the contract suite for keymanager.KeyManager.
package keymanagertest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/trustmesh/trustmesh/internal/ca/keymanager"
)

// Run checks km against the KeyManager contract. km must be empty.
func Run(t *testing.T, newKM func(t *testing.T) keymanager.KeyManager) {
	ctx := context.Background()
	t.Run("GenerateEachType", func(t *testing.T) {
		km := newKM(t)
		for _, kt := range []keymanager.KeyType{keymanager.ECP256, keymanager.ECP384, keymanager.RSA2048} {
			k, err := km.GenerateKey(ctx, "key-"+kt.String(), kt)
			if err != nil {
				t.Fatalf("GenerateKey(%v): %v", kt, err)
			}
			if !kt.Matches(k.Public()) {
				t.Fatalf("GenerateKey(%v) returned %T", kt, k.Public())
			}
			got, err := km.GetKey(ctx, "key-"+kt.String())
			if err != nil {
				t.Fatalf("GetKey: %v", err)
			}
			assertSamePublic(t, got, k)
			assertSigns(t, got)
		}
	})
	t.Run("GenerateReplaces", func(t *testing.T) {
		km := newKM(t)
		first, err := km.GenerateKey(ctx, "slot-A", keymanager.ECP256)
		if err != nil {
			t.Fatal(err)
		}
		second, err := km.GenerateKey(ctx, "slot-A", keymanager.ECP256)
		if err != nil {
			t.Fatal(err)
		}
		if samePublic(first, second) {
			t.Fatal("two generations produced the same key")
		}
		got, err := km.GetKey(ctx, "slot-A")
		if err != nil {
			t.Fatal(err)
		}
		assertSamePublic(t, got, second)
	})
	t.Run("UnknownKey", func(t *testing.T) {
		km := newKM(t)
		if _, err := km.GetKey(ctx, "missing"); !errors.Is(err, keymanager.ErrKeyNotFound) {
			t.Fatalf("GetKey(missing) = %v, want ErrKeyNotFound", err)
		}
	})
	t.Run("RejectsBadIDs", func(t *testing.T) {
		km := newKM(t)
		for _, id := range []string{"", "../escape", "a/b", "a b"} {
			if _, err := km.GenerateKey(ctx, id, keymanager.ECP256); err == nil {
				t.Errorf("GenerateKey(%q) accepted", id)
			}
		}
	})
}

func samePublic(a, b crypto.Signer) bool {
	pa, _ := x509.MarshalPKIXPublicKey(a.Public())
	pb, _ := x509.MarshalPKIXPublicKey(b.Public())
	return string(pa) == string(pb)
}

func assertSamePublic(t *testing.T, got, want crypto.Signer) {
	t.Helper()
	if !samePublic(got, want) {
		t.Fatal("GetKey returned a different key than GenerateKey")
	}
}

func assertSigns(t *testing.T, k crypto.Signer) {
	t.Helper()
	sum := sha256.Sum256([]byte("contract"))
	if _, err := k.Sign(rand.Reader, sum[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign: %v", err)
	}
}
