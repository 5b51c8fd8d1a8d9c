// Command timestamps checks that a Strata daemon keeps nanosecond timestamps, as containerd does, through its
// Go client library: `timestamps make` creates a content blob, a snapshot, an image, a container and a lease,
// checks that each created/updated time lies between two nanosecond clock readings taken around the call,
// and prints every record's times (RFC3339Nano), one "<record> <created> <updated>" line each;
// `timestamps read` prints the same lines from what the daemon answers now (e.g. after a restart).
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	ptypes "github.com/gogo/protobuf/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const ns = "go-timestamps"

var data = []byte("nanoseconds, please")

func fatal(format string, args ...interface{}) {
	fmt.Printf("FAIL "+format+"\n", args...)
	os.Exit(1)
}

func between(what string, t, before, after time.Time) {
	if t.Before(before) || t.After(after) {
		fatal("%s: %s is not between %s and %s", what, t.Format(time.RFC3339Nano), before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano))
	}
}

func line(name string, created, updated time.Time) {
	fmt.Printf("%s %s %s\n", name, created.UTC().Format(time.RFC3339Nano), updated.UTC().Format(time.RFC3339Nano))
}

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "make" && os.Args[1] != "read") {
		fmt.Fprintln(os.Stderr, "usage: timestamps make|read SOCKET")
		os.Exit(2)
	}
	client, err := containerd.New(os.Args[2], containerd.WithDefaultNamespace(ns))
	if err != nil {
		fatal("connect: %v", err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	cs := client.ContentStore()
	sn := client.SnapshotService("native")
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	if os.Args[1] == "make" {
		b := time.Now()
		if err := content.WriteBlob(ctx, cs, "ts-blob", bytes.NewReader(data), desc, content.WithLabels(map[string]string{"containerd.io/gc.root": "x"})); err != nil {
			fatal("WriteBlob: %v", err)
		}
		a := time.Now()
		info, err := cs.Info(ctx, desc.Digest)
		if err != nil {
			fatal("Info: %v", err)
		}
		between("content created", info.CreatedAt, b, a)
		b = time.Now()
		info, err = cs.Update(ctx, content.Info{Digest: desc.Digest, Labels: map[string]string{"x": "1"}}, "labels.x")
		a = time.Now()
		if err != nil {
			fatal("content Update: %v", err)
		}
		between("content updated", info.UpdatedAt, b, a)

		b = time.Now()
		if _, err := sn.Prepare(ctx, "ts-snap", "", snapshots.WithLabels(map[string]string{"containerd.io/gc.root": "x"})); err != nil {
			fatal("Prepare: %v", err)
		}
		a = time.Now()
		si, err := sn.Stat(ctx, "ts-snap")
		if err != nil {
			fatal("Stat: %v", err)
		}
		between("snapshot created", si.Created, b, a)

		b = time.Now()
		img, err := client.ImageService().Create(ctx, images.Image{Name: "ts/image:1", Target: desc})
		a = time.Now()
		if err != nil {
			fatal("image Create: %v", err)
		}
		between("image created", img.CreatedAt, b, a)

		b = time.Now()
		c, err := client.ContainerService().Create(ctx, containers.Container{ID: "ts-container", Runtime: containers.RuntimeInfo{Name: "io.containerd.runc.v2"}, Spec: &ptypes.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte("{}")}})
		a = time.Now()
		if err != nil {
			fatal("container Create: %v", err)
		}
		between("container created", c.CreatedAt, b, a)

		b = time.Now()
		l, err := client.LeasesService().Create(ctx, leases.WithID("ts-lease"))
		a = time.Now()
		if err != nil {
			fatal("lease Create: %v", err)
		}
		between("lease created", l.CreatedAt, b, a)
	}
	info, err := cs.Info(ctx, desc.Digest)
	if err != nil {
		fatal("Info: %v", err)
	}
	line("content", info.CreatedAt, info.UpdatedAt)
	si, err := sn.Stat(ctx, "ts-snap")
	if err != nil {
		fatal("Stat: %v", err)
	}
	line("snapshot", si.Created, si.Updated)
	img, err := client.ImageService().Get(ctx, "ts/image:1")
	if err != nil {
		fatal("image Get: %v", err)
	}
	line("image", img.CreatedAt, img.UpdatedAt)
	c, err := client.ContainerService().Get(ctx, "ts-container")
	if err != nil {
		fatal("container Get: %v", err)
	}
	line("container", c.CreatedAt, c.UpdatedAt)
	ls, err := client.LeasesService().List(ctx, "id==ts-lease")
	if err != nil || len(ls) != 1 {
		fatal("lease List: %v %v", ls, err)
	}
	line("lease", ls[0].CreatedAt, ls[0].CreatedAt)
	fmt.Println("PASS")
}
