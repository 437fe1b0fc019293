package keymanager_test

import (
	"context"
	"crypto"
	"os"
	"path/filepath"
	"testing"

	. "github.com/trustmesh/trustmesh/internal/ca/keymanager"
	"github.com/trustmesh/trustmesh/internal/ca/keymanager/keymanagertest"
)

func TestMemoryContract(t *testing.T) {
	keymanagertest.Run(t, func(t *testing.T) KeyManager { return NewMemory() })
}

func TestDiskContract(t *testing.T) {
	keymanagertest.Run(t, func(t *testing.T) KeyManager {
		d, err := NewDisk(filepath.Join(t.TempDir(), "keys"))
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

func TestDiskPersistsOwnerOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	k, err := d.GenerateKey(context.Background(), "x509-CA-A", ECP384)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "x509-CA-A.key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	di, _ := os.Stat(dir)
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("key dir mode %v, want 0700", di.Mode().Perm())
	}
	// A fresh instance (a restarted server) reads the same key back.
	d2, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := d2.GetKey(context.Background(), "x509-CA-A")
	if err != nil {
		t.Fatal(err)
	}
	if !ECP384.Matches(got.Public()) || !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
		t.Fatal("reloaded key differs")
	}
}

func TestParseKeyType(t *testing.T) {
	for in, want := range map[string]KeyType{"ec-p256": ECP256, "P-256": ECP256, "ec-p384": ECP384, "rsa-2048": RSA2048, "RSA2048": RSA2048} {
		got, err := ParseKeyType(in)
		if err != nil || got != want {
			t.Errorf("ParseKeyType(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseKeyType("rsa-1024"); err == nil {
		t.Error("rsa-1024 accepted")
	}
}
