package memtrim

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dropReadOnlyImage madvises MADV_DONTNEED over the executable's private
// mappings that are not writable (text r-xp, rodata r--p). For a private
// file mapping that was never written, that only drops page-table
// entries: the next access refaults the same bytes from the page cache.
// Writable mappings (.data, .bss, the heap) are never touched, since
// MADV_DONTNEED would reset them.
func dropReadOnlyImage() (int, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	var regions []region
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		if r, ok := parseMapsLine(sc.Text(), exe); ok {
			regions = append(regions, r)
		}
	}
	n := 0
	for _, r := range regions {
		// Syscall with plain addresses: the range is not Go memory.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, r.start, r.end-r.start, unix.MADV_DONTNEED); errno != 0 {
			return n, fmt.Errorf("madvise %x-%x: %w", r.start, r.end, errno)
		}
		n++
	}
	return n, nil
}

type region struct{ start, end uintptr }

// parseMapsLine picks a /proc/self/maps line that is a private,
// non-writable mapping of exe: "start-end perms offset dev inode path".
func parseMapsLine(line, exe string) (region, bool) {
	f := strings.Fields(line)
	if len(f) < 6 || strings.Join(f[5:], " ") != exe {
		return region{}, false
	}
	perms := f[1]
	if len(perms) != 4 || perms[0] != 'r' || perms[1] != '-' || perms[3] != 'p' {
		return region{}, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return region{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return region{}, false
	}
	return region{uintptr(start), uintptr(end)}, true
}

// rssKiB is this process's VmRSS.
func rssKiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
