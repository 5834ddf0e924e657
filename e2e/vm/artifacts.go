package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ArtifactsHost is the name the guest reaches the artifact server by
// (/etc/hosts of the VM image: 10.0.2.101, port 80, forwarded by QEMU to
// the host's file server).
const ArtifactsHost = "artifacts.vm.internal"

// artifactServer serves the mender artifacts to the guest over plain HTTP
// on the host's loopback (the guest's only way to it is QEMU's guestfwd),
// and records each download.
type artifactServer struct {
	srv   *http.Server
	ln    net.Listener
	files map[string]string // URL path → file

	mu        sync.Mutex
	downloads []download
}

type download struct {
	Path       string
	Start, End time.Time
	Bytes      int64
	Complete   bool
}

func startArtifactServer(files map[string]string) (*artifactServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("artifact server: %w", err)
	}
	a := &artifactServer{ln: ln, files: files}
	a.srv = &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = a.srv.Serve(ln) }()
	return a, nil
}

func (a *artifactServer) serve(w http.ResponseWriter, r *http.Request) {
	path, ok := a.files[r.URL.Path]
	if !ok || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	d := download{Path: r.URL.Path, Start: time.Now()}
	cw := &countingWriter{w: w}
	http.ServeContent(cw, r, filepath.Base(path), st.ModTime(), f)
	d.End, d.Bytes = time.Now(), cw.n
	d.Complete = r.Method == http.MethodGet && r.Header.Get("Range") == "" && cw.n == st.Size()
	a.mu.Lock()
	a.downloads = append(a.downloads, d)
	a.mu.Unlock()
}

type countingWriter struct {
	w http.ResponseWriter
	n int64
}

func (c *countingWriter) Header() http.Header  { return c.w.Header() }
func (c *countingWriter) WriteHeader(code int) { c.w.WriteHeader(code) }
func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Addr is the server's host:port on the loopback.
func (a *artifactServer) Addr() string { return a.ln.Addr().String() }

// URL is the guest's URL of a served file.
func (a *artifactServer) URL(name string) string { return "http://" + ArtifactsHost + "/" + name }

// Downloads returns the downloads so far.
func (a *artifactServer) Downloads() []download {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]download(nil), a.downloads...)
}

func (a *artifactServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return a.srv.Close()
	}
	return nil
}

// artifactFiles maps URL paths to the artifacts in dir.
func artifactFiles(dir string, names ...string) (map[string]string, error) {
	files := map[string]string{}
	for _, n := range names {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("artifact %s: %w (device/image/vm/make-artifacts.sh makes it)", n, err)
		}
		if strings.ContainsAny(n, "/ ") {
			return nil, fmt.Errorf("artifact name %q: want a plain file name", n)
		}
		files["/"+n] = p
	}
	return files, nil
}
