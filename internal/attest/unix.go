package attest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Unix is SPIRE's unix workload attestor: selectors from the peer's
// credentials and, when its process is visible in /proc, its binary.
//
//	unix:uid:N  unix:gid:N  unix:user:NAME  unix:group:NAME
//	unix:supplementary_gid:N  unix:supplementary_group:NAME
//	unix:path:/abs/bin  unix:sha256:HEX
//
// Reading another user's /proc/<pid>/exe needs the agent to run as root
// (or with CAP_SYS_PTRACE); without it path and sha256 selectors are left
// out for such peers, and the uid/gid ones still apply.
type Unix struct {
	// ProcRoot is /proc (settable for tests).
	ProcRoot string

	mu     sync.Mutex
	hashes map[fileKey]string // sha256 by file identity, so a binary is hashed once
}

type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
	ctime    int64
}

const maxHashCache = 512

// NewUnix returns a unix attestor reading /proc.
func NewUnix() *Unix { return &Unix{ProcRoot: "/proc", hashes: map[fileKey]string{}} }

// Name implements WorkloadAttestor.
func (u *Unix) Name() string { return "unix" }

// Attest implements WorkloadAttestor.
func (u *Unix) Attest(_ context.Context, p PeerInfo) ([]string, error) {
	sels := []string{
		"unix:uid:" + strconv.FormatUint(uint64(p.UID), 10),
		"unix:gid:" + strconv.FormatUint(uint64(p.GID), 10),
	}
	if usr, err := user.LookupId(strconv.FormatUint(uint64(p.UID), 10)); err == nil {
		sels = append(sels, "unix:user:"+usr.Username)
	}
	if grp, err := user.LookupGroupId(strconv.FormatUint(uint64(p.GID), 10)); err == nil {
		sels = append(sels, "unix:group:"+grp.Name)
	}
	if p.PID <= 0 {
		return sels, nil
	}
	procDir := filepath.Join(u.ProcRoot, strconv.Itoa(int(p.PID)))
	// The PID could be reused by another process while we read /proc: note
	// the process start time before and check it after.
	start, err := processStartTime(procDir)
	if err != nil {
		return sels, nil // gone, or not visible: credentials only
	}
	sels = append(sels, supplementaryGroups(procDir, p.GID)...)
	if path, err := os.Readlink(filepath.Join(procDir, "exe")); err == nil {
		sels = append(sels, "unix:path:"+strings.TrimSuffix(path, " (deleted)"))
		if sum, err := u.binaryHash(filepath.Join(procDir, "exe")); err == nil {
			sels = append(sels, "unix:sha256:"+sum)
		}
	}
	if again, err := processStartTime(procDir); err != nil || again != start {
		return nil, errors.New("workload process exited or its PID was reused during attestation")
	}
	return sels, nil
}

// processStartTime is field 22 of /proc/<pid>/stat (after the command name,
// which may itself contain spaces and parentheses).
func processStartTime(procDir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(procDir, "stat"))
	if err != nil {
		return "", err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", errors.New("malformed stat")
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return "", errors.New("malformed stat")
	}
	return fields[19], nil // field 22 overall; fields[0] is field 3
}

func supplementaryGroups(procDir string, primary uint32) []string {
	f, err := os.Open(filepath.Join(procDir, "status"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		for _, g := range strings.Fields(rest) {
			if g == strconv.FormatUint(uint64(primary), 10) {
				continue
			}
			out = append(out, "unix:supplementary_gid:"+g)
			if grp, err := user.LookupGroupId(g); err == nil {
				out = append(out, "unix:supplementary_group:"+grp.Name)
			}
		}
		break
	}
	return out
}

// binaryHash returns the hex SHA-256 of the executable at path, cached by
// the file's identity (device, inode, size, times): hashing a large binary
// on every Workload API call would dominate its latency.
func (u *Unix) binaryHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("no stat for %s", path)
	}
	key := fileKey{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
	u.mu.Lock()
	sum, ok := u.hashes[key]
	u.mu.Unlock()
	if ok {
		return sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	sum = hex.EncodeToString(h.Sum(nil))
	u.mu.Lock()
	if u.hashes == nil || len(u.hashes) >= maxHashCache {
		u.hashes = map[fileKey]string{}
	}
	u.hashes[key] = sum
	u.mu.Unlock()
	return sum, nil
}
