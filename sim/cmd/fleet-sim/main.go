// Command fleet-sim serves the local IoT Core (a stand-in for AWS IoT Core)
// so real agent processes and the demo can run on one machine.
//
//	fleet-sim serve --dir DIR --allowlist FILE [--env local] [--listen 127.0.0.1:0]
//	                [--alpn-listen auto] [--http 127.0.0.1:0] [--control-plane 127.0.0.1:0]
//	                [--serial-pattern RE]
//	                [--job-minute 1m] [--log-level info]
//
// serve runs the local stack (the local IoT Core with the stack's real
// Lambda handlers, the allowlist deployed as `pulumi up` deploys it) and
// writes, atomically, DIR/root-ca.pem, DIR/claim.pem, DIR/claim.key
// (0600), DIR/api (operator HTTP API host:port), DIR/control-plane (URL of
// the local AWS endpoint: AWS IoT control and data plane, Lambda Invoke,
// the registry table read-only, the artifacts and config buckets; for
// AWS_ENDPOINT_URL, aws --endpoint-url and the SDKs' BaseEndpoint; see
// docs/local-iot-core.md), DIR/outputs.json (the stack outputs, as `pulumi
// stack output --json` prints them), DIR/agent.json (a fleet-agent
// configuration for the local IoT Core), DIR/endpoint-alpn (MQTT/TLS
// host:port that requires ALPN x-amzn-mqtt-ca, as AWS IoT Core's 443; not
// with --alpn-listen off) and, last, DIR/endpoint (MQTT/TLS host:port, as
// AWS IoT Core's 8883): wait for DIR/endpoint to know the simulator is
// ready. It runs until SIGINT or SIGTERM. It follows the --allowlist file
// as production follows the S3 object: an edit (or SIGHUP) runs the real
// allowlist sync (README, "Admitting and revoking devices").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/iot-fleet/iot-fleet/internal/allowlist"
	"github.com/iot-fleet/iot-fleet/internal/atomicfile"
	"github.com/iot-fleet/iot-fleet/sim/core"
	"github.com/iot-fleet/iot-fleet/sim/stack"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fleet-sim:", err)
		os.Exit(1)
	}
}

const usage = "usage: fleet-sim serve --dir DIR --allowlist FILE [flags]"

// help is what `fleet-sim --help` prints.
const help = `fleet-sim serves the local IoT Core: a stand-in for AWS IoT Core on this
machine, with the stack's IoT policies, fleet provisioning by claim (the real
pre-provisioning hook), the Jobs and Device Shadow MQTT APIs, and AWS IoT's
control-plane API for the AWS CLI and SDKs.

` + usage + `

serve writes into DIR: root-ca.pem, claim.pem, claim.key (0600), api (the
operator HTTP API), control-plane (the URL of the local AWS endpoint: AWS IoT
control and data plane, Lambda Invoke, the registry table read-only over
DynamoDB's API, S3 for the artifacts and config buckets; use it as
AWS_ENDPOINT_URL), outputs.json (the stack outputs, as "pulumi stack output
--json" prints them), agent.json (a fleet-agent configuration), endpoint-alpn
and, last, endpoint (MQTT/TLS host:port). It runs until SIGINT or SIGTERM.
Editing the --allowlist file (or SIGHUP) runs the allowlist sync: new serials
may provision, removed ones are revoked.
"fleet-sim serve --help" lists the flags; docs/local-iot-core.md documents
the APIs.
`

func run(args []string, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		_, err := io.WriteString(stderr, help)
		return err
	}
	if len(args) == 0 || args[0] != "serve" {
		return errors.New(usage + ` ("fleet-sim --help" for more)`)
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage)
		fs.PrintDefaults()
	}
	dir := fs.String("dir", "", "directory for root-ca.pem, claim.pem, claim.key, api, control-plane, outputs.json, agent.json and endpoint (required)")
	allow := fs.String("allowlist", "", "allowlist.txt of serials the pre-provisioning hook admits (required); followed: an edit or SIGHUP runs the allowlist sync (admits new serials, revokes removed ones)")
	env := fs.String("env", "local", "stack environment (names: iot-fleet-<env>, thing prefix <env>-)")
	listen := fs.String("listen", "127.0.0.1:0", "MQTT/TLS listen address (AWS IoT Core's 8883)")
	alpnListen := fs.String("alpn-listen", "auto", "listen address of MQTT/TLS with ALPN x-amzn-mqtt-ca (AWS IoT Core's 443, the AWS SDKs' and Device Client's default): auto (127.0.0.1:443 as root when free, else a free port), off, or an address")
	httpAddr := fs.String("http", "127.0.0.1:0", "operator HTTP API listen address")
	artifactsAddr := fs.String("artifacts-listen", "127.0.0.1:0", "listen address of the artifacts endpoint: devices download presigned artifact URLs there, and nothing else")
	artifactsURL := fs.String("artifacts-url", "", "base URL of the presigned artifact URLs in OTA job documents, as devices reach the artifacts endpoint (default: its URL; e.g. http://artifacts.vm.internal where that forwards to it)")
	cpAddr := fs.String("control-plane", "127.0.0.1:0", "listen address of the local AWS endpoint (AWS IoT, Lambda, DynamoDB and S3 APIs, as the AWS CLI and SDKs speak them)")
	pattern := fs.String("serial-pattern", allowlist.DefaultSerialPattern, "serial pattern (Go regexp, anchored)")
	jobMinute := fs.Duration("job-minute", time.Minute, "length of a Jobs timeout minute (shorten for demos)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil // the flags were printed
		}
		return err
	}
	if *dir == "" || *allow == "" {
		return errors.New("--dir and --allowlist are required; " + usage)
	}
	if *artifactsURL != "" {
		if u, err := url.Parse(*artifactsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return fmt.Errorf("--artifacts-url %q: want http://HOST[:PORT] (the artifacts endpoint as devices reach it)", *artifactsURL)
		}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level %q: %w", *level, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))

	if _, err := allowlist.CompilePattern(*pattern); err != nil {
		return fmt.Errorf("--serial-pattern: %w", err)
	}
	if _, err := os.Stat(*allow); err != nil {
		return fmt.Errorf("--allowlist: %w", err)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return fmt.Errorf("--dir: %w", err)
	}

	alpnAddr := alpnListenAddr(*alpnListen)

	cpLn, err := net.Listen("tcp", *cpAddr)
	if err != nil {
		return fmt.Errorf("--control-plane: %w", err)
	}
	controlPlane := "http://" + cpLn.Addr().String()
	if ap, ok := cpLn.Addr().(*net.TCPAddr); ok && !ap.IP.IsLoopback() {
		log.Warn("the local AWS endpoint checks no credentials (SigV4 is accepted unchecked) and listens beyond loopback: anyone who reaches it can revoke certificates, create jobs and invoke the stack's Lambdas",
			"controlPlane", controlPlane)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The local stack: the local IoT Core with the stack's real Lambda
	// handlers; the allowlist is deployed as `pulumi up` deploys it.
	artLn, err := net.Listen("tcp", *artifactsAddr)
	if err != nil {
		cpLn.Close()
		return fmt.Errorf("--artifacts-listen: %w", err)
	}
	// The stack serves its local AWS endpoint on cpLn and the artifacts
	// endpoint on artLn (and closes them).
	st, err := stack.Start(ctx, stack.Options{
		Core:          core.Options{Env: *env, Addr: *listen, ALPNAddr: alpnAddr, Logger: log, JobMinute: *jobMinute},
		SerialPattern: *pattern, Logger: log,
		AWSListener: cpLn, ArtifactsListener: artLn, ArtifactsURL: strings.TrimSuffix(*artifactsURL, "/"),
	})
	if err != nil {
		cpLn.Close()
		artLn.Close()
		return err
	}
	defer st.Close()
	c := st.Core
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	synced, err := st.FollowAllowlist(ctx, *allow, stack.FollowOptions{Reload: hup})
	if err != nil {
		return fmt.Errorf("--allowlist %s: %w", *allow, err)
	}

	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("--http: %w", err)
	}
	srv := &http.Server{Handler: c.HTTPHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("operator API stopped", "error", err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	claim, err := c.IssueClaimCertificate()
	if err != nil {
		return err
	}
	outputs, err := st.Outputs(*dir)
	if err != nil {
		return err
	}
	agent, err := st.AgentConfig(*dir)
	if err != nil {
		return err
	}
	outputsJSON, err := jsonFile(outputs)
	if err != nil {
		return err
	}
	agentJSON, err := jsonFile(agent)
	if err != nil {
		return err
	}
	files := []outFile{
		{"root-ca.pem", c.RootCAPEM(), 0o644},
		{"claim.pem", claim.CertPEM, 0o644},
		{"claim.key", claim.KeyPEM, 0o600},
		{"api", []byte(ln.Addr().String() + "\n"), 0o644},
		{"control-plane", []byte(controlPlane + "\n"), 0o644},
		{"artifacts", []byte(st.AWS.ArtifactsEndpoint + "\n"), 0o644},
		{"outputs.json", outputsJSON, 0o644},
		{"agent.json", agentJSON, 0o644},
	}
	if a := c.ALPNEndpoint(); a != "" {
		files = append(files, outFile{"endpoint-alpn", []byte(a + "\n"), 0o644})
	}
	// endpoint comes last: its presence says the simulator is ready.
	files = append(files, outFile{"endpoint", []byte(c.Endpoint() + "\n"), 0o644})
	for _, f := range files {
		if err := atomicfile.WriteFile(filepath.Join(*dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	log.Info("fleet-sim ready", "endpoint", c.Endpoint(), "alpnEndpoint", c.ALPNEndpoint(), "api", "http://"+ln.Addr().String(), "controlPlane", controlPlane, "dir", *dir,
		"allowed_serials", synced.Listed, "claim_certificate", claim.CertificateID)
	<-ctx.Done()
	log.Info("fleet-sim stopping")
	_ = os.Remove(filepath.Join(*dir, "endpoint"))
	_ = os.Remove(filepath.Join(*dir, "endpoint-alpn"))
	return nil
}

// outFile is a file serve writes into --dir.
type outFile struct {
	name string
	data []byte
	perm os.FileMode
}

// alpnListenAddr resolves --alpn-listen: "off" is none; "auto" is
// 127.0.0.1:443 for root when nothing listens there (AWS IoT Core's port),
// else a free port; anything else is the address itself.
func alpnListenAddr(v string) string {
	switch v {
	case "off", "":
		return ""
	case "auto":
		if os.Geteuid() == 0 {
			if ln, err := net.Listen("tcp", "127.0.0.1:443"); err == nil {
				_ = ln.Close()
				return "127.0.0.1:443"
			}
		}
		return "127.0.0.1:0"
	}
	return v
}
