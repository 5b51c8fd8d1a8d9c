// Command pull pulls one image with unpack through containerd's Go client library (1.6.20, unmodified), as
// nerdctl and k3s do (client.Pull with WithPullUnpack: the unpacker labels each extraction snapshot with
// containerd.io/snapshot.ref), and prints "ok <chainID>" or the error. test/images/concurrent-pulls.test.ts
// starts several at once against one stratad.
//
//	pull -address SOCK -namespace NS -ref 127.0.0.1:PORT/repo:tag
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/remotes/docker"
)

func main() {
	address := flag.String("address", "", "stratad's socket")
	namespace := flag.String("namespace", "default", "the namespace")
	ref := flag.String("ref", "", "an image in a registry served over plain http")
	snapshotter := flag.String("snapshotter", "overlayfs", "the snapshotter")
	flag.Parse()
	client, err := containerd.New(*address)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), *namespace)
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts))})
	img, err := client.Pull(ctx, *ref, containerd.WithPullUnpack, containerd.WithResolver(resolver), containerd.WithPullSnapshotter(*snapshotter))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ok", len(diffIDs))
}
