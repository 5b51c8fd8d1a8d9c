// Package suites runs containerd's own content and snapshotter test suites, unmodified, against a Strata
// daemon over gRPC through containerd's content/proxy and snapshots/proxy clients.
//
//	STRATA_ADDRESS      the daemon's socket (required)
//	STRATA_SNAPSHOTTER  the snapshotter TestSnapshotterSuite drives (default overlayfs)
//
// Built with `go test -c` in GOPATH mode against Debian's containerd 1.6.20 sources.
package suites

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/content"
	contentproxy "github.com/containerd/containerd/content/proxy"
	contenttestsuite "github.com/containerd/containerd/content/testsuite"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/leases"
	leasesproxy "github.com/containerd/containerd/leases/proxy"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	snapshotsproxy "github.com/containerd/containerd/snapshots/proxy"
	snapshotstestsuite "github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func dial(t *testing.T) *grpc.ClientConn {
	address := os.Getenv("STRATA_ADDRESS")
	if address == "" {
		t.Fatal("STRATA_ADDRESS is not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, dialer.DialAddress(address),
		grpc.WithInsecure(),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
	)
	if err != nil {
		t.Fatalf("dial %s: %v", address, err)
	}
	return conn
}

// As containerd's integration/client/content_test.go: one namespace per test, each under a lease, and the
// cleanup aborts the test's ingests and deletes its blobs.
func TestContentSuite(t *testing.T) {
	conn := dial(t)
	defer conn.Close()
	contenttestsuite.ContentSuite(t, "ContentClient", contentStore(conn))
}

// Strata shares blobs across namespaces as containerd's default ("shared") policy does.
func TestContentCrossNSSharedSuite(t *testing.T) {
	conn := dial(t)
	defer conn.Close()
	contenttestsuite.ContentCrossNSSharedSuite(t, "ContentClientShared", contentStore(conn))
}

func contentStore(conn *grpc.ClientConn) contenttestsuite.StoreInitFn {
	lm := leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(conn))
	var count uint64
	return func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		cs := contentproxy.NewContentStore(contentapi.NewContentClient(conn))
		name := contenttestsuite.Name(ctx)
		wrap := func(ctx context.Context) (context.Context, func(context.Context) error, error) {
			n := atomic.AddUint64(&count, 1)
			ctx = namespaces.WithNamespace(ctx, fmt.Sprintf("%s-n%d", name, n))
			l, err := lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
			if err != nil {
				return ctx, nil, err
			}
			ctx = leases.WithLease(ctx, l.ID)
			return ctx, func(ctx context.Context) error { return lm.Delete(ctx, l) }, nil
		}
		ctx = namespaces.WithNamespace(ctx, name)
		ctx = contenttestsuite.SetContextWrapper(ctx, wrap)
		return ctx, cs, func() error {
			statuses, err := cs.ListStatuses(ctx)
			if err != nil {
				return err
			}
			for _, st := range statuses {
				if err := cs.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
					return fmt.Errorf("failed to abort %s: %w", st.Ref, err)
				}
			}
			return cs.Walk(ctx, func(info content.Info) error {
				if err := cs.Delete(ctx, info.Digest); err != nil {
					if errdefs.IsNotFound(err) {
						return nil
					}
					return err
				}
				return nil
			})
		}, nil
	}
}

// As containerd's integration/client/snapshot_test.go: the suite on the daemon's snapshotter.
func TestSnapshotterSuite(t *testing.T) {
	name := os.Getenv("STRATA_SNAPSHOTTER")
	if name == "" {
		name = "overlayfs"
	}
	conn := dial(t)
	newSnapshotter := func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return snapshotsproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name), nil, nil
	}
	snapshotstestsuite.SnapshotterSuite(t, name, newSnapshotter)
}
