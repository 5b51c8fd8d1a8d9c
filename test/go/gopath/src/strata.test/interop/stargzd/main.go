// stargzd: stargz-snapshotter's own snapshotter (its service package: FUSE lazy mounts of eStargz layers),
// served as a containerd proxy snapshotter on a unix socket, for interop tests of Strata-converted images.
//
//	stargzd -root DIR -address SOCK
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"path/filepath"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	"github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	snbase "github.com/containerd/stargz-snapshotter/snapshot"
	"google.golang.org/grpc"
)

func main() {
	root := flag.String("root", "", "state directory")
	address := flag.String("address", "", "unix socket to serve on")
	flag.Parse()
	ctx := context.Background()
	// Plain http for the loopback test registry, no credentials.
	hosts := func(ref reference.Spec) ([]docker.RegistryHost, error) {
		// stargz's fetcher uses the host's client transport as is: it must be set.
		client := &http.Client{Transport: http.DefaultTransport}
		return docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(func(string) (bool, error) { return true, nil }),
			docker.WithClient(client),
		)(ref.Hostname())
	}
	fs, err := stargzfs.NewFilesystem(filepath.Join(*root, "stargz"), config.Config{NoPrometheus: true},
		stargzfs.WithGetSources(source.FromDefaultLabels(hosts)), stargzfs.WithOverlayOpaqueType(layer.OverlayOpaqueTrusted))
	if err != nil {
		fmt.Fprintf(os.Stderr, "stargzd: %v\n", err)
		os.Exit(1)
	}
	sn, err := snbase.NewSnapshotter(ctx, filepath.Join(*root, "snapshotter"), fs, snbase.AsynchronousRemove)
	if err != nil {
		fmt.Fprintf(os.Stderr, "stargzd: %v\n", err)
		os.Exit(1)
	}
	os.Remove(*address)
	l, err := net.Listen("unix", *address)
	if err != nil {
		fmt.Fprintf(os.Stderr, "stargzd: %v\n", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.Stop()
		sn.Close()
		os.Exit(0)
	}()
	fmt.Println("READY")
	if err := srv.Serve(l); err != nil {
		fmt.Fprintf(os.Stderr, "stargzd: %v\n", err)
		os.Exit(1)
	}
}
