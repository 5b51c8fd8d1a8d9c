// Command streams drives a Strata daemon through containerd's Go client library (1.6.20, unmodified) from many
// goroutines at once, over the client's one gRPC connection, as containerd's users do (and as Strata's Go
// client bench does with 64 callers). It prints one line per check, "PASS <name>" or "FAIL <name>: <reason>";
// test/api/grpc-limits.test.ts asserts on them.
//
//	streams -address SOCK -namespace NS -callers 64 -calls 20 [-subscribers 64]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd"
	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
)

var (
	address     = flag.String("address", "", "stratad's socket")
	namespace   = flag.String("namespace", "go-streams", "the namespace")
	callers     = flag.Int("callers", 64, "goroutines calling at once")
	calls       = flag.Int("calls", 20, "rounds of calls per goroutine")
	subscribers = flag.Int("subscribers", 0, "event subscriptions held open at once (0: no such check)")
)

func main() {
	flag.Parse()
	if *address == "" {
		fmt.Fprintln(os.Stderr, "-address is required")
		os.Exit(2)
	}
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(*namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		fmt.Printf("FAIL connect: %v\n", err)
		os.Exit(1)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), *namespace), 60*time.Second)
	defer cancel()
	failed := false
	report := func(name string, err error) {
		if err != nil {
			failed = true
			fmt.Printf("FAIL %s: %v\n", name, err)
		} else {
			fmt.Printf("PASS %s\n", name)
		}
	}
	report("concurrent callers", concurrentCalls(ctx, client))
	if *subscribers > 0 {
		report("concurrent subscriptions", concurrentSubscriptions(ctx, client))
	}
	if failed {
		os.Exit(1)
	}
}

// concurrentCalls: each goroutine makes -calls rounds of Version, namespaces List and a snapshot Stat of a key
// that does not exist (NotFound); every call must answer as expected.
func concurrentCalls(ctx context.Context, client *containerd.Client) error {
	var wg sync.WaitGroup
	var done int64
	errs := make(chan error, *callers)
	for g := 0; g < *callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < *calls; i++ {
				if _, err := client.Version(ctx); err != nil {
					errs <- fmt.Errorf("Version: %w", err)
					return
				}
				if _, err := client.NamespaceService().List(ctx); err != nil {
					errs <- fmt.Errorf("namespaces List: %w", err)
					return
				}
				if _, err := client.SnapshotService("overlayfs").Stat(ctx, "no-such-snapshot"); !errdefs.IsNotFound(err) {
					errs <- fmt.Errorf("snapshot Stat: want NotFound, got %v", err)
					return
				}
				atomic.AddInt64(&done, 3)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if want := int64(*callers * *calls * 3); done != want {
		return fmt.Errorf("%d calls answered, want %d", done, want)
	}
	return nil
}

// concurrentSubscriptions: -subscribers event subscriptions open at once on the one connection, each of which
// must receive an event published after they are all open (published again until all have it).
func concurrentSubscriptions(ctx context.Context, client *containerd.Client) error {
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	var got int64
	var wg sync.WaitGroup
	for g := 0; g < *subscribers; g++ {
		ch, errs := client.Subscribe(subCtx, `topic=="/strata/streams"`)
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-ch:
				atomic.AddInt64(&got, 1)
			case <-errs:
			case <-subCtx.Done():
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for atomic.LoadInt64(&got) < int64(*subscribers) && time.Now().Before(deadline) {
		if err := client.EventService().Publish(ctx, "/strata/streams", &eventtypes.ContainerCreate{ID: "streams"}); err != nil {
			return fmt.Errorf("Publish: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	n := atomic.LoadInt64(&got)
	stop()
	wg.Wait()
	if n != int64(*subscribers) {
		return fmt.Errorf("%d of %d subscriptions received the event", n, *subscribers)
	}
	return nil
}
