// loadgen: a closed-loop HTTPS load generator for the router benchmark.
//
// Each of -c workers keeps one kept-alive mTLS connection and sends GETs back to back
// for -d, cycling through the namespaces; it presents a client certificate and the
// X-Remote-* identity headers, like the aggregator. Prints one JSON line of results.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

func main() {
	base := flag.String("url", "", "origin, e.g. https://127.0.0.1:6443")
	pathTemplate := flag.String("path", "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/s0-metric", "path; {ns} is replaced")
	namespaces := flag.String("namespaces", "default", "comma-separated namespaces to cycle through")
	concurrency := flag.Int("c", 16, "concurrent connections")
	duration := flag.Duration("d", 5*time.Second, "measurement duration")
	warmup := flag.Duration("warmup", time.Second, "warm-up before measuring")
	certFile := flag.String("cert", "", "client certificate")
	keyFile := flag.String("key", "", "client key")
	caFile := flag.String("ca", "", "CA for the server")
	serverName := flag.String("server-name", "localhost", "TLS server name")
	aggregator := flag.Bool("aggregator-headers", false, "send the headers kube-apiserver's aggregator sends with an HPA's request (Audit-Id, X-Forwarded-*, the controller's user agent, three groups, the service account's extras), not only user, groups and Accept")
	passes := flag.Int("passes", 0, "instead of -d: request every namespace this many times, split across the workers, then stop (warming every tenant's path)")
	flag.Parse()

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	check(err)
	pem, err := os.ReadFile(*caFile)
	check(err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: *serverName},
		MaxIdleConnsPerHost: *concurrency,
		MaxConnsPerHost:     *concurrency,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	nsList := strings.Split(*namespaces, ",")

	var mu sync.Mutex
	var latencies []time.Duration
	errors := 0
	measuring := *passes > 0
	start := time.Now()
	deadline := start.Add(*warmup + *duration)
	// In -passes mode worker w takes namespaces w, w+c, w+2c, ...: each exactly once per pass.
	steps := 0
	if *passes > 0 {
		*warmup = 0
		deadline = start.Add(time.Hour)
		steps = *passes * ((len(nsList) + *concurrency - 1) / *concurrency)
	}
	var measureStart time.Time
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(worker int) {
			defer wg.Done()
			local := make([]time.Duration, 0, 100000)
			localErrors := 0
			// Timed mode: workers start spread evenly over the namespaces and walk them in
			// order, as HPAs are spread over tenants; started side by side they would move as
			// one convoy, each tenant's requests arriving in bursts of several at once.
			i := worker * len(nsList) / *concurrency
			for step := 0; time.Now().Before(deadline); step++ {
				if *passes > 0 {
					if step >= steps {
						break
					}
					i = (worker + step**concurrency) % len(nsList)
				}
				ns := nsList[i%len(nsList)]
				i++
				req, _ := http.NewRequest("GET", *base+strings.ReplaceAll(*pathTemplate, "{ns}", ns), nil)
				req.Header["X-Remote-User"] = []string{"system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
				req.Header["X-Remote-Group"] = []string{"system:serviceaccounts", "system:authenticated"}
				req.Header["Accept"] = []string{"application/json"}
				if *aggregator {
					req.Header["User-Agent"] = []string{"kube-controller-manager/v1.35.4 (linux/amd64) kubernetes/6c2f1b3/system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
					req.Header["Accept"] = []string{"application/vnd.kubernetes.protobuf, */*"}
					req.Header["Audit-Id"] = []string{fmt.Sprintf("1f3b6c2e-8d55-4c3e-9a8e-%012d", step)}
					req.Header["X-Forwarded-For"] = []string{"10.0.0.4"}
					req.Header["X-Forwarded-Host"] = []string{"10.96.0.1:443"}
					req.Header["X-Forwarded-Proto"] = []string{"https"}
					req.Header["X-Forwarded-Uri"] = []string{strings.ReplaceAll(*pathTemplate, "{ns}", ns)}
					req.Header["X-Remote-Group"] = []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}
					req.Header["X-Remote-Extra-Authentication.kubernetes.io%2fcredential-Id"] = []string{"JTI=6c1b9d0e-61a2-4f7e-b3a5-9d8f2c1e0b7a"}
					req.Header["X-Remote-Extra-Authentication.kubernetes.io%2fnode-Name"] = []string{"node-1"}
					req.Header["X-Remote-Extra-Authentication.kubernetes.io%2fpod-Name"] = []string{"kube-controller-manager-node-1"}
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				ok := err == nil
				if ok {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					ok = resp.StatusCode == 200
				}
				elapsed := time.Since(t0)
				mu.Lock()
				m := measuring
				mu.Unlock()
				if !m {
					continue
				}
				if ok {
					local = append(local, elapsed)
				} else {
					localErrors++
				}
			}
			mu.Lock()
			latencies = append(latencies, local...)
			errors += localErrors
			mu.Unlock()
		}(w)
	}
	time.Sleep(*warmup)
	mu.Lock()
	measuring = true
	if *passes > 0 {
		measureStart = start
	} else {
		measureStart = time.Now()
	}
	mu.Unlock()
	wg.Wait()
	elapsed := time.Since(measureStart).Seconds()
	sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
	pct := func(p float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return float64(latencies[int(float64(len(latencies)-1)*p)].Microseconds()) / 1000
	}
	out, _ := json.Marshal(map[string]any{
		"requests": len(latencies), "errors": errors, "seconds": elapsed,
		"rps": float64(len(latencies)) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
	})
	fmt.Println(string(out))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
