//go:build !linux

package memtrim

func dropReadOnlyImage() (int, error) { return 0, nil }

func rssKiB() int64 { return 0 }
