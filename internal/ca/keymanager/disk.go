package keymanager

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Disk stores each key as a PKCS#8 PEM file (mode 0600) in a directory
// (mode 0700), so a restarted server keeps its CA and trust bundle. Writes
// go to a temporary file that is fsynced and renamed: a crash leaves either
// the old key or the new one, never a torn file.
type Disk struct {
	dir   string
	mu    sync.RWMutex
	cache map[string]crypto.Signer
}

// NewDisk returns a key manager keeping keys in dir, creating it if needed.
func NewDisk(dir string) (*Disk, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create key directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict key directory: %w", err)
	}
	return &Disk{dir: dir, cache: map[string]crypto.Signer{}}, nil
}

func (d *Disk) path(id string) string { return filepath.Join(d.dir, id+".key.pem") }

// GenerateKey implements KeyManager.
func (d *Disk) GenerateKey(_ context.Context, id string, kt KeyType) (crypto.Signer, error) {
	if err := checkKeyID(id); err != nil {
		return nil, err
	}
	k, err := kt.Generate()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := WriteFileAtomic(d.path(id), data, 0o600); err != nil {
		return nil, fmt.Errorf("store key %q: %w", id, err)
	}
	d.mu.Lock()
	d.cache[id] = k
	d.mu.Unlock()
	return k, nil
}

// GetKey implements KeyManager.
func (d *Disk) GetKey(_ context.Context, id string) (crypto.Signer, error) {
	if err := checkKeyID(id); err != nil {
		return nil, err
	}
	d.mu.RLock()
	k, ok := d.cache[id]
	d.mu.RUnlock()
	if ok {
		return k, nil
	}
	data, err := os.ReadFile(d.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%q: %w", id, ErrKeyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read key %q: %w", id, err)
	}
	k, err = ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", d.path(id), err)
	}
	d.mu.Lock()
	d.cache[id] = k
	d.mu.Unlock()
	return k, nil
}

// ParsePrivateKeyPEM parses the first private key in PEM data: PKCS#8,
// SEC 1 EC or PKCS#1 RSA.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key found")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", block.Type, err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
		return s, nil
	}
}

// WriteFileAtomic writes data to path through a synced temporary file in
// the same directory and a rename, then syncs the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func checkKeyID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("invalid key id %q", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("invalid key id %q: only letters, digits, '-' and '_'", id)
		}
	}
	return nil
}
