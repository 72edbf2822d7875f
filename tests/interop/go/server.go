// The interop health server on grpc-go: google.golang.org/grpc/health.Server.
//
// The command line and the stdin commands are the same for every stack; see
// tests/interop/README.md. Built in GOPATH mode against Debian's grpc-go by
// .ci/interop-setup.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// grace is how long a graceful stop lets calls finish before cancelling them (Watch
// streams never finish on their own).
const grace = time.Second

// ageGrace is how long calls may go on after a connection reached its maximum age.
const ageGrace = time.Second

var statuses = map[string]healthpb.HealthCheckResponse_ServingStatus{
	"SERVING":     healthpb.HealthCheckResponse_SERVING,
	"NOT_SERVING": healthpb.HealthCheckResponse_NOT_SERVING,
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(2)
}

func main() {
	args := parseArgs(os.Args[1:])
	var options []grpc.ServerOption
	if args.maxStreams > 0 {
		options = append(options, grpc.MaxConcurrentStreams(uint32(args.maxStreams)))
	}
	if args.maxConnectionAgeMs > 0 {
		options = append(options, grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      time.Duration(args.maxConnectionAgeMs) * time.Millisecond,
			MaxConnectionAgeGrace: ageGrace,
		}))
	}
	if args.certPath != "" {
		creds, err := credentials.NewServerTLSFromFile(args.certPath, args.keyPath)
		if err != nil {
			fail("cannot load the certificate: %v", err)
		}
		options = append(options, grpc.Creds(creds))
	}

	server := grpc.NewServer(options...)
	healthServer := health.NewServer()
	healthpb.RegisterHealthServer(server, healthServer)
	for _, service := range args.services {
		healthServer.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
	}

	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", args.port))
	if err != nil {
		fail("cannot listen: %v", err)
	}
	go func() {
		if err := server.Serve(listener); err != nil {
			fail("serve: %v", err)
		}
	}()
	fmt.Printf("listening %d\n", listener.Addr().(*net.TCPAddr).Port)

	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		words := strings.Fields(lines.Text())
		switch {
		case len(words) == 3 && words[0] == "set" && statuses[words[2]] != healthpb.HealthCheckResponse_UNKNOWN:
			service := words[1]
			if service == "-" {
				service = ""
			}
			healthServer.SetServingStatus(service, statuses[words[2]])
		case len(words) == 1 && words[0] == "stop":
			healthServer.Shutdown()
			stopGracefully(server)
			fmt.Println("ok")
			return
		default:
			fail("unknown command %q", lines.Text())
		}
		fmt.Println("ok")
	}
	server.Stop()
}

type arguments struct {
	port              int
	services          []string
	certPath, keyPath string
	maxStreams        int
	// Each connection is closed (GOAWAY) this long after it opened; 0: never.
	maxConnectionAgeMs int
}

// parseArgs reads the command line by hand: the flag package stops at the first
// argument that is not a flag, and --tls takes two.
func parseArgs(argv []string) arguments {
	args := arguments{port: -1}
	number := func(i int) int {
		if i >= len(argv) {
			fail("%s needs a number", argv[i-1])
		}
		n, err := strconv.Atoi(argv[i])
		if err != nil || n < 0 {
			fail("%s needs a number, not %q", argv[i-1], argv[i])
		}
		return n
	}
	for i := 0; i < len(argv); i++ {
		switch argv[i] {
		case "--port":
			i++
			args.port = number(i)
		case "--services":
			i++
			if i >= len(argv) {
				fail("--services needs a list")
			}
			for _, name := range strings.Split(argv[i], ",") {
				if name != "" {
					args.services = append(args.services, name)
				}
			}
		case "--tls":
			if i+2 >= len(argv) {
				fail("--tls needs CERT_PEM KEY_PEM")
			}
			args.certPath, args.keyPath = argv[i+1], argv[i+2]
			i += 2
		case "--max-streams":
			i++
			args.maxStreams = number(i)
		case "--max-connection-age-ms":
			i++
			args.maxConnectionAgeMs = number(i)
		default:
			fail("unknown argument %q", argv[i])
		}
	}
	if args.port < 0 {
		fail("--port N is required")
	}
	return args
}

// stopGracefully lets calls in flight finish for up to grace, then cancels the rest.
func stopGracefully(server *grpc.Server) {
	stopped := make(chan struct{})
	go func() {
		server.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(grace):
		server.Stop()
		<-stopped
	}
}
