// Command agent benchmarks the node agent as a separate process:
//
//   - Workload API FetchX509SVID latency (stream open to first SVID), p50/p99;
//   - the time for an entry change to reach 1,000 connected FetchX509SVID
//     streams (from the admin API call returning to the last stream
//     receiving the new SVID);
//   - the agent's resident memory holding SVIDs for 1,000 entries.
//
// Run it with bench/agent.sh. It builds the trustmesh binary, starts a
// server and an agent on loopback in a temporary directory, and removes
// everything when done.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	apiv1 "github.com/trustmesh/trustmesh/api/v1"
	"github.com/trustmesh/trustmesh/internal/apiclient"
)

func main() {
	entries := flag.Int("entries", 1000, "registration entries the agent holds")
	streams := flag.Int("streams", 1000, "workload streams connected during the propagation measurement")
	fetches := flag.Int("fetches", 2000, "FetchX509SVID calls for the latency distribution")
	flag.Parse()
	if err := run(*entries, *streams, *fetches); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(nEntries, nStreams, nFetches int) error {
	dir, err := os.MkdirTemp("", "tm-bench-agent-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "trustmesh")
	build := exec.Command("go", "build", "-o", bin, "./cmd/trustmesh")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}

	listen := "127.0.0.1:18081"
	server := exec.Command(bin, "server", "run", "--data-dir", filepath.Join(dir, "server"), "--listen", listen, "--log-level", "warn")
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		return err
	}
	defer stop(server)
	admin := apiclient.NewSocket(filepath.Join(dir, "server", "admin.sock"))
	ctx := context.Background()
	if err := waitUntil(30*time.Second, func() bool { return admin.Health(ctx) == nil }); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	bundle, err := admin.Bundle(ctx, "pem")
	if err != nil {
		return err
	}
	os.WriteFile(filepath.Join(dir, "bundle.pem"), bundle, 0o644)
	tok, err := admin.GenerateToken(ctx, time.Hour)
	if err != nil {
		return err
	}

	// nEntries entries for uids nobody runs as (the agent fetches and holds
	// their SVIDs all the same), and one for this process.
	for i := 0; i < nEntries-1; i++ {
		if _, err := admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: fmt.Sprintf("spiffe://example.org/bench/w%d", i),
			ParentID: tok.AgentSPIFFEID, Selectors: []string{fmt.Sprintf("unix:uid:%d", 200000+i)}}); err != nil {
			return err
		}
	}
	mine, err := admin.CreateEntry(ctx, apiv1.EntryCreate{SPIFFEID: "spiffe://example.org/bench/me", ParentID: tok.AgentSPIFFEID,
		Selectors: []string{"unix:uid:" + strconv.Itoa(os.Getuid())}})
	if err != nil {
		return err
	}

	sock := filepath.Join(dir, "agent.sock")
	agent := exec.Command(bin, "agent", "run", "--server", listen, "--trust-bundle", filepath.Join(dir, "bundle.pem"),
		"--join-token", tok.Token, "--socket", sock, "--data-dir", filepath.Join(dir, "agent"), "--metrics-addr", "127.0.0.1:19090", "--log-level", "warn")
	agent.Stderr = os.Stderr
	if err := agent.Start(); err != nil {
		return err
	}
	defer stop(agent)
	start := time.Now()
	if err := waitUntil(120*time.Second, func() bool { return metric("trustmesh_agent_svids_cached") >= float64(nEntries) }); err != nil {
		return fmt.Errorf("agent never held %d SVIDs: %w", nEntries, err)
	}
	warm := time.Since(start)
	time.Sleep(2 * time.Second) // let allocation settle before reading RSS
	rss, err := rssKiB(agent.Process.Pid)
	if err != nil {
		return err
	}

	conns := make([]*grpc.ClientConn, 10)
	for i := range conns {
		if conns[i], err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	hdr := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")

	// Latency: a fresh stream per call, as a starting workload does.
	lat := make([]time.Duration, 0, nFetches)
	for i := 0; i < nFetches; i++ {
		c := workload.NewSpiffeWorkloadAPIClient(conns[i%len(conns)])
		sctx, cancel := context.WithCancel(hdr)
		t0 := time.Now()
		s, err := c.FetchX509SVID(sctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		d := time.Since(t0)
		cancel()
		if err != nil {
			return fmt.Errorf("fetch %d: %w", i, err)
		}
		lat = append(lat, d)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }

	// Propagation: nStreams open streams, then change the entry.
	const marker = "bench-updated.example.org"
	var wg sync.WaitGroup
	got := make(chan time.Time, nStreams)
	ready := make(chan struct{}, nStreams)
	sctx, cancel := context.WithCancel(hdr)
	defer cancel()
	for i := 0; i < nStreams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := workload.NewSpiffeWorkloadAPIClient(conns[i%len(conns)]).FetchX509SVID(sctx, &workload.X509SVIDRequest{})
			if err != nil {
				return
			}
			if _, err := s.Recv(); err != nil {
				return
			}
			ready <- struct{}{}
			for {
				m, err := s.Recv()
				if err != nil {
					return
				}
				if hasDNS(m, marker) {
					got <- time.Now()
					return
				}
			}
		}(i)
	}
	for i := 0; i < nStreams; i++ {
		select {
		case <-ready:
		case <-time.After(60 * time.Second):
			return fmt.Errorf("only %d of %d streams connected", i, nStreams)
		}
	}
	dns := []string{marker}
	t0 := time.Now()
	if _, err := admin.UpdateEntry(ctx, mine.ID, apiv1.EntryPatch{DNSNames: &dns}); err != nil {
		return err
	}
	var last time.Time
	for i := 0; i < nStreams; i++ {
		select {
		case ts := <-got:
			if ts.After(last) {
				last = ts
			}
		case <-time.After(60 * time.Second):
			return fmt.Errorf("only %d of %d streams saw the change", i, nStreams)
		}
	}
	propagation := last.Sub(t0)
	cancel()
	wg.Wait()

	out := map[string]any{
		"entries": nEntries, "streams": nStreams, "fetches": nFetches,
		"warmup_all_svids_ms":            warm.Milliseconds(),
		"fetch_x509svid_p50_ms":          ms(p(0.50)),
		"fetch_x509svid_p99_ms":          ms(p(0.99)),
		"entry_change_to_all_streams_ms": ms(propagation),
		"agent_rss_mib":                  float64(rss) / 1024,
	}
	fmt.Printf("\nagent benchmark (%d entries)\n", nEntries)
	fmt.Printf("  all %d SVIDs fetched after start:        %8d ms\n", nEntries, warm.Milliseconds())
	fmt.Printf("  FetchX509SVID latency p50 / p99:       %8.2f / %.2f ms (%d calls)\n", ms(p(0.5)), ms(p(0.99)), nFetches)
	fmt.Printf("  entry change -> %d streams updated:  %8.1f ms\n", nStreams, ms(propagation))
	fmt.Printf("  agent RSS holding %d SVIDs:          %8.1f MiB\n", nEntries, float64(rss)/1024)
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func hasDNS(m *workload.X509SVIDResponse, name string) bool {
	for _, s := range m.Svids {
		certs, err := x509.ParseCertificates(s.X509Svid)
		if err == nil && len(certs) > 0 {
			for _, d := range certs[0].DNSNames {
				if d == name {
					return true
				}
			}
		}
	}
	return false
}

func metric(name string) float64 {
	resp, err := http.Get("http://127.0.0.1:19090/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return -1
}

func rssKiB(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strconv.Atoi(strings.Fields(rest)[0])
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

func waitUntil(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func stop(c *exec.Cmd) {
	_ = c.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.Process.Kill()
	}
}
