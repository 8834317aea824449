// Package kubetest starts a real Kubernetes control plane for tests: etcd,
// kube-apiserver and kube-controller-manager, from the binaries that
// hack/kube.sh builds, in the test's temporary directory, stopped when the
// test ends.
//
// Two controllers run: serviceaccount-controller, which gives every
// namespace its "default" ServiceAccount (the ServiceAccount admission
// plugin stays on, as in a real cluster, and refuses pods until that
// account exists), and disruption-controller, which fills in
// PodDisruptionBudget status so that the Eviction API honours budgets.
// There is no scheduler and no kubelet: CreatePod binds a pod to its node
// and writes a Running, Ready status itself, and CreateNode writes the
// node's Ready condition. The node-lifecycle controller, which would mark
// such nodes NotReady and taint them, is off. With no kubelet to confirm a
// container's end, a Running pod deleted (or evicted) with a grace period
// stays Terminating for good; delete with a grace period of 0 to remove it
// at once.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Options tune Start. The zero value is what most tests want.
type Options struct {
	// APIServerFlags are extra kube-apiserver flags, given after the
	// harness's own, so one of them can override a default
	// (--feature-gates=..., --enable-admission-plugins=...).
	APIServerFlags []string
}

// ControlPlane is a running etcd, kube-apiserver and
// kube-controller-manager.
type ControlPlane struct {
	// URL is the apiserver's address, https://127.0.0.1:<port>.
	URL string
	// CAFile is the PEM file of the CA that signed the apiserver's serving
	// certificate.
	CAFile string
	// Admin authenticates as user "admin" in group system:masters, through
	// a static token.
	Admin *rest.Config
	// Client is a clientset for Admin.
	Client kubernetes.Interface

	dir   string
	caPEM []byte
	procs []*proc // in start order
}

// startTimeout bounds each wait for a component to come up; on 2 shared
// cores under -race a cold start takes a few seconds.
const startTimeout = 60 * time.Second

// Start starts etcd, kube-apiserver and kube-controller-manager in
// t.TempDir() and kills them when the test ends (the controller-manager
// and apiserver first, then etcd). It returns once the apiserver is ready
// and the controller-manager has synced.
//
// The binaries come from $ARK_KUBE_DIR when set, else from
// <repository>/hack/kube.sh, which builds them on first use and answers at
// once afterwards. The build takes from 7 minutes to more than go test's
// default -timeout on a busy machine: run hack/kube.sh before the tests.
// Start skips the test under -short, and when neither is available. The
// components' output is logged when the test fails.
func Start(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	if testing.Short() {
		t.Skip("kubetest: starts etcd, kube-apiserver and kube-controller-manager; skipped with -short")
	}
	bin := binDir(t)
	began := time.Now()
	for attempt := 1; ; attempt++ {
		c, err := start(t, bin, opts)
		if err == nil {
			t.Cleanup(func() { c.stop(t) })
			t.Logf("kubetest: control plane at %s ready in %v", c.URL, time.Since(began).Round(time.Millisecond))
			return c
		}
		// A free port can be taken between picking it and binding it.
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			t.Fatalf("kubetest: %v", err)
		}
		t.Logf("kubetest: %v; retrying on other ports", err)
	}
}

var errPortTaken = errors.New("port taken")

func start(t testing.TB, bin string, opts Options) (*ControlPlane, error) {
	dir := t.TempDir()
	c := &ControlPlane{dir: dir}
	ok := false
	defer func() {
		if !ok {
			c.stop(nil)
		}
	}()

	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdPort, peerPort, apiPort := ports[0], ports[1], ports[2]
	c.URL = "https://127.0.0.1:" + strconv.Itoa(apiPort)

	pki, err := writePKI(dir)
	if err != nil {
		return nil, err
	}
	c.CAFile, c.caPEM = pki.caFile, pki.caPEM

	token := rand.Text()
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+`,admin,admin-uid,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing the token file: %w", err)
	}
	c.Admin = &rest.Config{
		Host:            c.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.caPEM},
		// Tests create objects in bursts; client-side throttling only slows them.
		QPS:   200,
		Burst: 400,
	}
	if c.Client, err = kubernetes.NewForConfig(c.Admin); err != nil {
		return nil, fmt.Errorf("building the admin client: %w", err)
	}
	kubeconfig := filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(kubeconfig, c.Admin); err != nil {
		return nil, err
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	etcd, err := c.run("etcd", filepath.Join(bin, "etcd"),
		"--name=kubetest",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		// The data dies with the test: durability buys nothing.
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	if err != nil {
		return nil, err
	}
	// The apiserver waits for etcd itself, so both start at once.
	api, err := c.run("kube-apiserver", filepath.Join(bin, "kube-apiserver"), append([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + pki.certFile,
		"--tls-private-key-file=" + pki.keyFile,
		"--token-auth-file=" + tokens,
		"--authorization-mode=RBAC",
		// No kubelet runs, so nothing would answer at the kubernetes
		// Service's endpoints anyway.
		"--endpoint-reconciler-type=none",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + pki.saKeyFile,
		"--service-account-signing-key-file=" + pki.saKeyFile,
	}, opts.APIServerFlags...)...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := c.waitHTTP(ctx, etcd, nil, etcdURL+"/health", ""); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.caPEM)
	if err := c.waitHTTP(ctx, api, pool, c.URL+"/readyz", token); err != nil {
		return nil, err
	}
	// Started only now: the controller-manager gives the apiserver 10
	// seconds to turn healthy, too few on a busy machine.
	if _, err := c.run("kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+kubeconfig,
		"--controllers=serviceaccount-controller,disruption-controller",
		"--leader-elect=false",
		"--secure-port=0",
	); err != nil {
		return nil, err
	}

	// serviceaccount-controller gives the "default" namespace its "default"
	// ServiceAccount once its informers have synced: proof that the
	// controller-manager is running, not only started.
	if err := c.waitServiceAccount(ctx, metav1.NamespaceDefault); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// waitServiceAccount waits for namespace's "default" ServiceAccount, made
// by the controller-manager.
func (c *ControlPlane) waitServiceAccount(ctx context.Context, namespace string) error {
	var last error
	for {
		_, err := c.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		last = err
		if err := c.pause(ctx); err != nil {
			return fmt.Errorf("waiting for serviceaccount %s/default (last error: %w): %w", namespace, last, err)
		}
	}
}

// pause waits a little, and returns an error when ctx ends or a
// component has exited.
func (c *ControlPlane) pause(ctx context.Context) error {
	select {
	case <-time.After(50 * time.Millisecond):
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, p := range c.procs {
		if err := p.exitError(); err != nil {
			return err
		}
	}
	return nil
}

// waitHTTP polls url, served by p, until it answers 200, or a component
// exits.
func (c *ControlPlane) waitHTTP(ctx context.Context, p *proc, roots *x509.CertPool, url, token string) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	defer client.CloseIdleConnections()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
		}
		last = err
		if err := c.pause(ctx); err != nil {
			return fmt.Errorf("waiting for %s on %s (last answer: %w): %w", p.name, url, last, err)
		}
	}
}

// run starts one component, its output kept for the failure log.
func (c *ControlPlane) run(name, path string, args ...string) (*proc, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Dir = c.dir
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.SysProcAttr = sysProcAttr()
	// A grandchild holding the output pipe must not hang Wait.
	p.cmd.WaitDelay = time.Second
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c.procs = append(c.procs, p)
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop stops the components, the apiserver and controller-manager before
// etcd, and when t (if not nil) has failed logs their output.
func (c *ControlPlane) stop(t testing.TB) {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop()
	}
	if t != nil && t.Failed() {
		for _, p := range c.procs {
			t.Logf("kubetest: %s output (%v):\n%s", p.name, p.err, p.out.tail(64<<10))
		}
	}
}

// proc is one running component.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  logBuffer
	done chan struct{} // closed once the process has exited and err is set
	err  error
}

// stop kills the process: its data dies with the test, so a graceful
// exit buys nothing, and the apiserver's takes a second.
func (p *proc) stop() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// exitError says how p ended, with the tail of its output; nil while it
// runs.
func (p *proc) exitError() error {
	select {
	case <-p.done:
	default:
		return nil
	}
	out := p.out.tail(8 << 10)
	err := fmt.Errorf("%s exited (%w):\n%s", p.name, p.err, out)
	if strings.Contains(out, "address already in use") {
		err = fmt.Errorf("%w: %w", errPortTaken, err)
	}
	return err
}

// logBuffer keeps a component's output, at most logLimit bytes of it.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	dropped int
}

const logLimit = 8 << 20

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len()+len(p) > logLimit {
		n := b.buf.Len() / 2
		b.buf.Next(n)
		b.dropped += n
	}
	return b.buf.Write(p)
}

// tail returns the last n bytes written, from a line start.
func (b *logBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) <= n && b.dropped == 0 {
		return s
	}
	if len(s) > n {
		s = s[len(s)-n:]
	}
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "[...]\n" + s
}

// freePorts returns n ports that were free on 127.0.0.1 a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("picking a free port: %w", err)
		}
		// Closed after all are picked, so the n ports differ.
		defer func() { _ = l.Close() }()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// binDir returns the directory holding etcd, kube-apiserver and
// kube-controller-manager.
func binDir(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("ARK_KUBE_DIR"); dir != "" {
		for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				t.Fatalf("kubetest: ARK_KUBE_DIR=%s: %v", dir, err)
			}
		}
		return dir
	}
	built.Lock()
	defer built.Unlock()
	if built.dir != "" {
		return built.dir
	}
	script, err := findScript()
	if err != nil {
		t.Skipf("kubetest: no control-plane binaries: set ARK_KUBE_DIR, or run inside the ark repository for hack/kube.sh (%v)", err)
	}
	began := time.Now()
	cmd := exec.Command(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubetest: %s: %v\n%s", script, err, stderr.Bytes())
	}
	if stderr.Len() > 0 {
		// hack/kube.sh speaks only when it builds.
		t.Logf("kubetest: %s built the control plane in %v", script, time.Since(began).Round(time.Second))
	}
	built.dir = strings.TrimSpace(string(out))
	return built.dir
}

// built caches hack/kube.sh's answer for the test binary's life.
var built struct {
	sync.Mutex
	dir string
}

// findScript looks for hack/kube.sh in the working directory (a package
// directory under go test) and its parents.
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		script := filepath.Join(dir, "hack", "kube.sh")
		if _, err := os.Stat(script); err == nil {
			return script, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("hack/kube.sh not found above the working directory")
		}
		dir = parent
	}
}

// ensureNamespace creates namespace unless it exists.
func (c *ControlPlane) ensureNamespace(ctx context.Context, namespace string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", namespace, err)
	}
	return nil
}
