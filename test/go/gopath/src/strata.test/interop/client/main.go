// Command client drives a Strata daemon through containerd's Go client library (1.6.20, unmodified) the way
// its users do, and prints one line per check: "PASS <name>" or "FAIL <name>: <reason>". The vitest side
// (test/interop-go/client.test.ts) asserts on those lines. Checks run in order; later ones use what earlier
// ones made (the pulled image, its snapshot), and each reports its own result.
//
//	client -address SOCK -namespace NS -ref 127.0.0.1:PORT/repo:tag -push-ref 127.0.0.1:PORT/other:tag
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/images/archive"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/rootfs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/typeurl"
	ptypes "github.com/gogo/protobuf/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var (
	address     = flag.String("address", "", "stratad's socket")
	namespace   = flag.String("namespace", "go-client", "the default namespace (must not exist yet)")
	ref         = flag.String("ref", "", "an image in the local registry (plain http)")
	pushRef     = flag.String("push-ref", "", "where client.Push puts the image")
	snapshotter = flag.String("snapshotter", "overlayfs", "the snapshotter")
	only        = flag.String("only", "", "comma-separated checks to run (default: all)")
)

var failed bool

func pass(name string) { fmt.Printf("PASS %s\n", name) }
func fail(name string, format string, args ...interface{}) {
	failed = true
	msg := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " | ")
	fmt.Printf("FAIL %s: %s\n", name, msg)
}

type state struct {
	client *containerd.Client
	ctx    context.Context
	image  containerd.Image
}

type check struct {
	name string
	fn   func(s *state) error
}

func resolver() containerd.RemoteOpt {
	return containerd.WithResolver(docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
	}))
}

func main() {
	flag.Parse()
	if *address == "" {
		fmt.Fprintln(os.Stderr, "-address is required")
		os.Exit(2)
	}
	s := &state{}
	checks := []check{
		{"connect with a default namespace that does not exist yet", checkConnect},
		{"pull with unpack from the local registry", checkPull},
		{"image is unpacked", checkIsUnpacked},
		{"container with a new snapshot and the image config", checkContainer},
		{"task with cio streams, wait, start, exit status and output", checkTask},
		{"task exec", checkExec},
		{"task pids, pause, resume and metrics; containers listed by label", checkTaskControl},
		{"images and content listed with filters", checkListFilters},
		{"a container snapshot's diff (rootfs.CreateDiff) applied to a new snapshot", checkDiff},
		{"events published by the client reach a subscriber", checkPublish},
		{"push to the local registry", checkPush},
		{"export and import", checkExportImport},
		{"content ReaderAt at offsets", checkReaderAt},
		{"leases with expiry and resources, synchronous delete", checkLeases},
		{"snapshot usage and walk with filters", checkSnapshots},
		{"filtered event subscription", checkEvents},
		{"introspection with filters", checkIntrospection},
		{"error kinds", checkErrors},
		{"fetch without unpack, then unpack; image size and usage", checkFetchUnpack},
		{"container labels set and extensions read back", checkContainerLabels},
		{"ingest status, list with filters and abort", checkIngests},
		{"image delete with synchronous garbage collection", checkImageDeleteSync},
	}
	want := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n != "" {
			want[n] = true
		}
	}
	for _, c := range checks {
		if len(want) > 0 && !want[c.name] {
			continue
		}
		if c.name != checks[0].name && s.client == nil {
			fail(c.name, "no client (connect failed)")
			continue
		}
		done := make(chan error, 1)
		go func() {
			defer func() {
				if r := recover(); r != nil {
					done <- fmt.Errorf("panic: %v", r)
				}
			}()
			done <- c.fn(s)
		}()
		select {
		case err := <-done:
			if err != nil {
				fail(c.name, "%v", err)
			} else {
				pass(c.name)
			}
		case <-time.After(60 * time.Second):
			fail(c.name, "timed out after 60s")
		}
	}
	if s.client != nil {
		s.client.Close()
	}
	if failed {
		os.Exit(1)
	}
}

func checkConnect(s *state) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(*namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("containerd.New with a fresh default namespace: %w", err)
	}
	s.client = client
	s.ctx = namespaces.WithNamespace(context.Background(), *namespace)
	if _, err := client.Version(ctx); err != nil {
		return fmt.Errorf("Version: %w", err)
	}
	imgs, err := client.ListImages(ctx)
	if err != nil {
		return fmt.Errorf("ListImages: %w", err)
	}
	if len(imgs) != 0 {
		return fmt.Errorf("a fresh namespace lists %d images", len(imgs))
	}
	return nil
}

func checkPull(s *state) error {
	img, err := s.client.Pull(s.ctx, *ref, containerd.WithPullUnpack, resolver(), containerd.WithPullSnapshotter(*snapshotter))
	if err != nil {
		return fmt.Errorf("Pull %s: %w", *ref, err)
	}
	s.image = img
	if img.Name() != *ref {
		return fmt.Errorf("image name %q, want %q", img.Name(), *ref)
	}
	stored, err := s.client.GetImage(s.ctx, *ref)
	if err != nil {
		return fmt.Errorf("GetImage after Pull: %w", err)
	}
	if stored.Target().Digest != img.Target().Digest {
		return fmt.Errorf("stored target %s, pulled %s", stored.Target().Digest, img.Target().Digest)
	}
	return nil
}

func checkIsUnpacked(s *state) error {
	if s.image == nil {
		return errors.New("no image (pull failed)")
	}
	ok, err := s.image.IsUnpacked(s.ctx, *snapshotter)
	if err != nil {
		return fmt.Errorf("IsUnpacked: %w", err)
	}
	if !ok {
		return errors.New("IsUnpacked says false after a pull with unpack")
	}
	ok, err = s.image.IsUnpacked(s.ctx, "native")
	if err != nil {
		return fmt.Errorf("IsUnpacked(native): %w", err)
	}
	if ok && *snapshotter != "native" {
		return errors.New("IsUnpacked(native) says true, but it was unpacked on " + *snapshotter)
	}
	return nil
}

func newContainer(s *state, id string, args ...string) (containerd.Container, error) {
	if s.image == nil {
		return nil, errors.New("no image (pull failed)")
	}
	return s.client.NewContainer(s.ctx, id,
		containerd.WithSnapshotter(*snapshotter),
		containerd.WithNewSnapshot(id+"-snapshot", s.image),
		containerd.WithNewSpec(oci.WithImageConfig(s.image), oci.WithProcessArgs(args...)),
	)
}

func checkContainer(s *state) error {
	c, err := newContainer(s, "go-c1", "sh", "-c", "echo hello from go; exit 7")
	if err != nil {
		return fmt.Errorf("NewContainer: %w", err)
	}
	info, err := c.Info(s.ctx)
	if err != nil {
		return fmt.Errorf("Info: %w", err)
	}
	if info.Snapshotter != *snapshotter || info.SnapshotKey != "go-c1-snapshot" || info.Image != *ref {
		return fmt.Errorf("container info: snapshotter %q key %q image %q", info.Snapshotter, info.SnapshotKey, info.Image)
	}
	if info.CreatedAt.IsZero() || info.Runtime.Name == "" {
		return fmt.Errorf("container info: created %v runtime %q", info.CreatedAt, info.Runtime.Name)
	}
	spec, err := c.Spec(s.ctx)
	if err != nil {
		return fmt.Errorf("Spec: %w", err)
	}
	if spec.Process == nil || strings.Join(spec.Process.Args, " ") != "sh -c echo hello from go; exit 7" {
		return fmt.Errorf("spec args %v", spec.Process)
	}
	found := false
	for _, e := range spec.Process.Env {
		if strings.HasPrefix(e, "PATH=") {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("the image config's env is not in the spec: %v", spec.Process.Env)
	}
	mounts, err := s.client.SnapshotService(*snapshotter).Mounts(s.ctx, "go-c1-snapshot")
	if err != nil || len(mounts) == 0 {
		return fmt.Errorf("the container's snapshot has no mounts: %v %v", mounts, err)
	}
	return nil
}

func checkTask(s *state) error {
	c, err := s.client.LoadContainer(s.ctx, "go-c1")
	if err != nil {
		return fmt.Errorf("LoadContainer: %w", err)
	}
	var out bytes.Buffer
	task, err := c.NewTask(s.ctx, cio.NewCreator(cio.WithStreams(new(bytes.Buffer), &out, io.Discard)))
	if err != nil {
		return fmt.Errorf("NewTask: %w", err)
	}
	statusC, err := task.Wait(s.ctx)
	if err != nil {
		return fmt.Errorf("Wait: %w", err)
	}
	if err := task.Start(s.ctx); err != nil {
		return fmt.Errorf("Start: %w", err)
	}
	var status containerd.ExitStatus
	select {
	case status = <-statusC:
	case <-time.After(30 * time.Second):
		return errors.New("the task did not exit in 30s")
	}
	code, exitedAt, err := status.Result()
	if err != nil {
		return fmt.Errorf("exit status: %w", err)
	}
	if _, err := task.Delete(s.ctx); err != nil {
		return fmt.Errorf("task Delete: %w", err)
	}
	if code != 7 {
		return fmt.Errorf("exit code %d, want 7", code)
	}
	if exitedAt.IsZero() {
		return errors.New("no exit time")
	}
	if got := out.String(); got != "hello from go\n" {
		return fmt.Errorf("output %q, want %q", got, "hello from go\n")
	}
	if err := c.Delete(s.ctx, containerd.WithSnapshotCleanup); err != nil {
		return fmt.Errorf("container Delete: %w", err)
	}
	if _, err := s.client.SnapshotService(*snapshotter).Stat(s.ctx, "go-c1-snapshot"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("the snapshot survived WithSnapshotCleanup: %v", err)
	}
	return nil
}

func checkExec(s *state) error {
	c, err := newContainer(s, "go-c2", "sleep", "60")
	if err != nil {
		return fmt.Errorf("NewContainer: %w", err)
	}
	defer c.Delete(s.ctx, containerd.WithSnapshotCleanup)
	task, err := c.NewTask(s.ctx, cio.NewCreator(cio.WithStreams(new(bytes.Buffer), io.Discard, io.Discard)))
	if err != nil {
		return fmt.Errorf("NewTask: %w", err)
	}
	defer task.Delete(s.ctx, containerd.WithProcessKill)
	statusC, err := task.Wait(s.ctx)
	if err != nil {
		return fmt.Errorf("Wait: %w", err)
	}
	if err := task.Start(s.ctx); err != nil {
		return fmt.Errorf("Start: %w", err)
	}
	st, err := task.Status(s.ctx)
	if err != nil || st.Status != containerd.Running {
		return fmt.Errorf("status %v %v, want running", st.Status, err)
	}
	spec, err := c.Spec(s.ctx)
	if err != nil {
		return fmt.Errorf("Spec: %w", err)
	}
	pspec := *spec.Process
	pspec.Args = []string{"sh", "-c", "echo exec says hi; exit 4"}
	var out bytes.Buffer
	p, err := task.Exec(s.ctx, "e1", &pspec, cio.NewCreator(cio.WithStreams(new(bytes.Buffer), &out, io.Discard)))
	if err != nil {
		return fmt.Errorf("Exec: %w", err)
	}
	pc, err := p.Wait(s.ctx)
	if err != nil {
		return fmt.Errorf("exec Wait: %w", err)
	}
	if err := p.Start(s.ctx); err != nil {
		return fmt.Errorf("exec Start: %w", err)
	}
	var es containerd.ExitStatus
	select {
	case es = <-pc:
	case <-time.After(30 * time.Second):
		return errors.New("the exec did not exit in 30s")
	}
	if _, err := p.Delete(s.ctx); err != nil {
		return fmt.Errorf("exec Delete: %w", err)
	}
	if es.ExitCode() != 4 {
		return fmt.Errorf("exec exit code %d, want 4", es.ExitCode())
	}
	if out.String() != "exec says hi\n" {
		return fmt.Errorf("exec output %q", out.String())
	}
	if err := task.Kill(s.ctx, syscall.SIGKILL); err != nil {
		return fmt.Errorf("Kill: %w", err)
	}
	select {
	case es = <-statusC:
	case <-time.After(30 * time.Second):
		return errors.New("the task did not exit in 30s after SIGKILL")
	}
	if es.ExitCode() != 137 {
		return fmt.Errorf("exit code after SIGKILL %d, want 137", es.ExitCode())
	}
	return nil
}

func checkPush(s *state) error {
	if s.image == nil {
		return errors.New("no image (pull failed)")
	}
	if err := s.client.Push(s.ctx, *pushRef, s.image.Target(), resolver()); err != nil {
		return fmt.Errorf("Push: %w", err)
	}
	r := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts))})
	name, desc, err := r.Resolve(s.ctx, *pushRef)
	if err != nil {
		return fmt.Errorf("resolving the pushed %s: %w", *pushRef, err)
	}
	if desc.Digest != s.image.Target().Digest || name != *pushRef {
		return fmt.Errorf("pushed %s resolves to %s, want %s", name, desc.Digest, s.image.Target().Digest)
	}
	return nil
}

func checkExportImport(s *state) error {
	if s.image == nil {
		return errors.New("no image (pull failed)")
	}
	var buf bytes.Buffer
	if err := s.client.Export(s.ctx, &buf, archive.WithImage(s.client.ImageService(), *ref)); err != nil {
		return fmt.Errorf("Export: %w", err)
	}
	ctx := namespaces.WithNamespace(s.ctx, *namespace+"-import")
	imgs, err := s.client.Import(ctx, bytes.NewReader(buf.Bytes()))
	if err != nil {
		return fmt.Errorf("Import: %w", err)
	}
	found := false
	for _, img := range imgs {
		if img.Name == *ref && img.Target.Digest == s.image.Target().Digest {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("Import returned %v, want %s", imgs, *ref)
	}
	got, err := s.client.ImageService().Get(ctx, *ref)
	if err != nil {
		return fmt.Errorf("the imported image in the other namespace: %w", err)
	}
	img := containerd.NewImage(s.client, got)
	if err := img.Unpack(ctx, *snapshotter); err != nil {
		return fmt.Errorf("Unpack of the imported image: %w", err)
	}
	if ok, err := img.IsUnpacked(ctx, *snapshotter); err != nil || !ok {
		return fmt.Errorf("imported image unpacked %v %v", ok, err)
	}
	return nil
}

func checkReaderAt(s *state) error {
	cs := s.client.ContentStore()
	data := make([]byte, 300000)
	for i := range data {
		data[i] = byte(i*7 + i/251)
	}
	dgst := digest.FromBytes(data)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: dgst, Size: int64(len(data))}
	ctx, done, err := s.client.WithLease(s.ctx)
	if err != nil {
		return fmt.Errorf("WithLease: %w", err)
	}
	defer done(ctx)
	if err := content.WriteBlob(ctx, cs, "readerat-"+dgst.Encoded()[:12], bytes.NewReader(data), desc); err != nil {
		return fmt.Errorf("WriteBlob: %w", err)
	}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return fmt.Errorf("ReaderAt: %w", err)
	}
	defer ra.Close()
	if ra.Size() != int64(len(data)) {
		return fmt.Errorf("Size %d, want %d", ra.Size(), len(data))
	}
	for _, c := range []struct{ off, n int }{{0, 10}, {1, 1}, {65535, 3}, {131072, 70000}, {299990, 10}, {150000, 0}} {
		b := make([]byte, c.n)
		n, err := ra.ReadAt(b, int64(c.off))
		if err != nil && !(errors.Is(err, io.EOF) && n == c.n) {
			return fmt.Errorf("ReadAt(%d, %d): %w", c.off, c.n, err)
		}
		if n != c.n || !bytes.Equal(b, data[c.off:c.off+c.n]) {
			return fmt.Errorf("ReadAt(%d, %d): read %d bytes, content differs", c.off, c.n, n)
		}
	}
	b := make([]byte, 20)
	n, err := ra.ReadAt(b, 299990)
	if n != 10 || !bytes.Equal(b[:10], data[299990:]) {
		return fmt.Errorf("ReadAt past the end: %d bytes, %v", n, err)
	}
	if err == nil {
		return errors.New("ReadAt past the end: no error (io.EOF expected)")
	}
	return nil
}

func checkLeases(s *state) error {
	lm := s.client.LeasesService()
	cs := s.client.ContentStore()
	l, err := lm.Create(s.ctx, leases.WithID("go-lease-1"), leases.WithExpiration(2*time.Second), leases.WithLabels(map[string]string{"purpose": "test"}))
	if err != nil {
		return fmt.Errorf("Create: %w", err)
	}
	if l.ID != "go-lease-1" || l.CreatedAt.IsZero() {
		return fmt.Errorf("created lease %+v", l)
	}
	exp, err := time.Parse(time.RFC3339, l.Labels["containerd.io/gc.expire"])
	if err != nil || exp.Before(time.Now()) || exp.After(time.Now().Add(3*time.Second)) {
		return fmt.Errorf("expiry label %q: %v", l.Labels["containerd.io/gc.expire"], err)
	}
	if _, err := lm.Create(s.ctx, leases.WithID("go-lease-1")); !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("a second lease go-lease-1: %v, want already exists", err)
	}
	ls, err := lm.List(s.ctx, `labels."purpose"==test`)
	if err != nil || len(ls) != 1 || ls[0].ID != "go-lease-1" {
		return fmt.Errorf("List with a label filter: %v %v", ls, err)
	}
	// A blob held only by a lease.
	data := []byte("held by go-lease-2 only " + time.Now().String())
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	l2, err := lm.Create(s.ctx, leases.WithID("go-lease-2"))
	if err != nil {
		return fmt.Errorf("Create go-lease-2: %w", err)
	}
	lctx := leases.WithLease(s.ctx, l2.ID)
	if err := content.WriteBlob(lctx, cs, "go-lease-blob", bytes.NewReader(data), desc); err != nil {
		return fmt.Errorf("WriteBlob under the lease: %w", err)
	}
	res := leases.Resource{ID: "go-lease-snap", Type: "snapshots/" + *snapshotter}
	if _, err := s.client.SnapshotService(*snapshotter).Prepare(s.ctx, "go-lease-snap", ""); err != nil {
		return fmt.Errorf("Prepare: %w", err)
	}
	if err := lm.AddResource(s.ctx, l2, res); err != nil {
		return fmt.Errorf("AddResource: %w", err)
	}
	rs, err := lm.ListResources(s.ctx, l2)
	if err != nil {
		return fmt.Errorf("ListResources: %w", err)
	}
	want := map[string]bool{"content:" + desc.Digest.String(): false, res.Type + ":" + res.ID: false}
	for _, r := range rs {
		if _, ok := want[r.Type+":"+r.ID]; ok {
			want[r.Type+":"+r.ID] = true
		}
	}
	for k, v := range want {
		if !v {
			return fmt.Errorf("ListResources %v lacks %s", rs, k)
		}
	}
	if err := lm.DeleteResource(s.ctx, l2, res); err != nil {
		return fmt.Errorf("DeleteResource: %w", err)
	}
	if err := lm.AddResource(s.ctx, l2, res); err != nil {
		return fmt.Errorf("AddResource again: %w", err)
	}
	if err := lm.Delete(s.ctx, l2, leases.SynchronousDelete); err != nil {
		return fmt.Errorf("Delete with SynchronousDelete: %w", err)
	}
	if _, err := cs.Info(s.ctx, desc.Digest); !errdefs.IsNotFound(err) {
		return fmt.Errorf("the lease's blob after a synchronous delete: %v, want not found", err)
	}
	if _, err := s.client.SnapshotService(*snapshotter).Stat(s.ctx, "go-lease-snap"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("the lease's snapshot after a synchronous delete: %v, want not found", err)
	}
	// go-lease-1 expires: the collector removes it once its time is past.
	deadline := time.Now().Add(15 * time.Second)
	for {
		ls, err := lm.List(s.ctx, `id==go-lease-1`)
		if err != nil {
			return fmt.Errorf("List: %w", err)
		}
		if len(ls) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the expired lease go-lease-1 is still listed 15s later")
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil
}

func checkSnapshots(s *state) error {
	sn := s.client.SnapshotService(*snapshotter)
	if s.image == nil {
		return errors.New("no image (pull failed)")
	}
	diffIDs, err := s.image.RootFS(s.ctx)
	if err != nil {
		return fmt.Errorf("RootFS: %w", err)
	}
	chain := diffIDs[0].String() // one layer: its chain ID is its diff ID
	if len(diffIDs) != 1 {
		return fmt.Errorf("expected a one-layer image, got %d layers", len(diffIDs))
	}
	u, err := sn.Usage(s.ctx, chain)
	if err != nil {
		return fmt.Errorf("Usage of the image's layer: %w", err)
	}
	if u.Size < 100000 || u.Inodes < 3 {
		return fmt.Errorf("Usage of the image's layer: %+v", u)
	}
	if _, err := sn.Prepare(s.ctx, "go-walk-a", chain, snapshots.WithLabels(map[string]string{"go-test": "a", "containerd.io/gc.root": "x"})); err != nil {
		return fmt.Errorf("Prepare a: %w", err)
	}
	if _, err := sn.Prepare(s.ctx, "go-walk-b", "", snapshots.WithLabels(map[string]string{"go-test": "b", "containerd.io/gc.root": "x"})); err != nil {
		return fmt.Errorf("Prepare b: %w", err)
	}
	walk := func(filters ...string) ([]string, error) {
		var keys []string
		err := sn.Walk(s.ctx, func(ctx context.Context, info snapshots.Info) error {
			keys = append(keys, info.Name)
			return nil
		}, filters...)
		return keys, err
	}
	cases := []struct {
		filters []string
		want    string
	}{
		{[]string{`labels."go-test"==a`}, "go-walk-a"},
		{[]string{`labels."go-test"`}, "go-walk-a,go-walk-b"},
		{[]string{`kind==active,labels."go-test"~="^b$"`}, "go-walk-b"},
		{[]string{`parent==` + chain}, "go-walk-a"},
		{[]string{`name==go-walk-a`, `name==go-walk-b`}, "go-walk-a,go-walk-b"},
		{[]string{`kind==committed`}, chain},
	}
	for _, c := range cases {
		keys, err := walk(c.filters...)
		if err != nil {
			return fmt.Errorf("Walk %v: %w", c.filters, err)
		}
		got := strings.Join(sortStrings(keys), ",")
		if got != c.want {
			return fmt.Errorf("Walk %v: %s, want %s", c.filters, got, c.want)
		}
	}
	// containerd's snapshots service passes the walk's error on unconverted: UNKNOWN, not invalid argument.
	if _, err := walk(`labels."go-test"==`); !errors.Is(err, errdefs.ErrUnknown) || !strings.Contains(err.Error(), "invalid argument") {
		return fmt.Errorf("Walk with a malformed filter: %v, want unknown", err)
	}
	ua, err := sn.Usage(s.ctx, "go-walk-a")
	if err != nil {
		return fmt.Errorf("Usage of an active snapshot: %w", err)
	}
	_ = ua
	for _, k := range []string{"go-walk-a", "go-walk-b"} {
		if err := sn.Remove(s.ctx, k); err != nil {
			return fmt.Errorf("Remove %s: %w", k, err)
		}
	}
	return nil
}

func sortStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

func checkEvents(s *state) error {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	ch, errs := s.client.Subscribe(ctx, `topic=="/images/create",namespace==`+*namespace, `topic=="/images/delete"`)
	time.Sleep(200 * time.Millisecond)
	is := s.client.ImageService()
	target := s.image.Target()
	other := namespaces.WithNamespace(s.ctx, *namespace+"-other")
	if _, err := is.Create(other, images.Image{Name: "go-events/ignored:1", Target: target}); err != nil {
		return fmt.Errorf("Create in another namespace: %w", err)
	}
	if _, err := is.Create(s.ctx, images.Image{Name: "go-events/a:1", Target: target}); err != nil {
		return fmt.Errorf("Create: %w", err)
	}
	if _, err := is.Update(s.ctx, images.Image{Name: "go-events/a:1", Target: target, Labels: map[string]string{"x": "y"}}, "labels.x"); err != nil {
		return fmt.Errorf("Update: %w", err)
	}
	if err := is.Delete(s.ctx, "go-events/a:1"); err != nil {
		return fmt.Errorf("Delete: %w", err)
	}
	var got []string
	for len(got) < 2 {
		select {
		case env := <-ch:
			v, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				return fmt.Errorf("event %s: %w", env.Topic, err)
			}
			name := ""
			switch e := v.(type) {
			case *eventtypes.ImageCreate:
				name = e.Name
			case *eventtypes.ImageDelete:
				name = e.Name
			default:
				return fmt.Errorf("unexpected event %s %T", env.Topic, v)
			}
			if env.Timestamp.IsZero() {
				return fmt.Errorf("event %s has no timestamp", env.Topic)
			}
			got = append(got, env.Namespace+" "+env.Topic+" "+name)
		case err := <-errs:
			return fmt.Errorf("subscription: %v", err)
		case <-time.After(10 * time.Second):
			return fmt.Errorf("events after 10s: %v", got)
		}
	}
	want := *namespace + " /images/create go-events/a:1|" + *namespace + " /images/delete go-events/a:1"
	if strings.Join(got, "|") != want {
		return fmt.Errorf("events %q, want %q", strings.Join(got, "|"), want)
	}
	select {
	case env := <-ch:
		return fmt.Errorf("an event the filters exclude: %s %s", env.Namespace, env.Topic)
	case <-time.After(300 * time.Millisecond):
	}
	is.Delete(other, "go-events/ignored:1")
	return nil
}

func checkIntrospection(s *state) error {
	in := s.client.IntrospectionService()
	resp, err := in.Plugins(s.ctx, []string{`type==io.containerd.snapshotter.v1`})
	if err != nil {
		return fmt.Errorf("Plugins: %w", err)
	}
	ids := map[string]bool{}
	for _, p := range resp.Plugins {
		if p.Type != "io.containerd.snapshotter.v1" {
			return fmt.Errorf("a filtered list holds %s.%s", p.Type, p.ID)
		}
		ids[p.ID] = p.InitErr == nil
	}
	if !ids[*snapshotter] {
		return fmt.Errorf("snapshotter %s is not listed ok: %v", *snapshotter, ids)
	}
	resp, err = in.Plugins(s.ctx, []string{`id==content`, `type==io.containerd.grpc.v1,id==containers`})
	if err != nil {
		return fmt.Errorf("Plugins: %w", err)
	}
	var got []string
	for _, p := range resp.Plugins {
		got = append(got, p.Type+"."+p.ID)
	}
	sortStrings(got)
	if strings.Join(got, ",") != "io.containerd.content.v1.content,io.containerd.grpc.v1.containers,io.containerd.grpc.v1.content" {
		return fmt.Errorf("plugins %v", got)
	}
	if _, err := in.Plugins(s.ctx, []string{`type==`}); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("a malformed filter: %v, want invalid argument", err)
	}
	srv, err := in.Server(s.ctx, &ptypes.Empty{})
	if err != nil || srv.UUID == "" {
		return fmt.Errorf("Server: %v %v", srv, err)
	}
	return nil
}

func checkErrors(s *state) error {
	cs := s.client.ContentStore()
	if _, err := cs.Info(s.ctx, digest.FromString("nothing here")); !errdefs.IsNotFound(err) {
		return fmt.Errorf("content Info of an unknown digest: %v, want not found", err)
	}
	if _, err := s.client.GetImage(s.ctx, "no/such:image"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("GetImage of an unknown name: %v, want not found", err)
	}
	if _, err := s.client.LoadContainer(s.ctx, "no-such-container"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("LoadContainer of an unknown id: %v, want not found", err)
	}
	if s.image != nil {
		if _, err := s.client.ImageService().Create(s.ctx, images.Image{Name: *ref, Target: s.image.Target()}); !errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("creating an image that exists: %v, want already exists", err)
		}
	}
	w1, err := cs.Writer(s.ctx, content.WithRef("go-locked-ref"))
	if err != nil {
		return fmt.Errorf("Writer: %w", err)
	}
	defer func() {
		w1.Close()
		cs.Abort(s.ctx, "go-locked-ref")
	}()
	if _, err := w1.Write([]byte("x")); err != nil {
		return fmt.Errorf("Write: %w", err)
	}
	// The store retries a locked ref for about a second (as containerd's local store), then says unavailable.
	wctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	_, err = cs.Writer(wctx, content.WithRef("go-locked-ref"))
	if err == nil {
		return errors.New("a second Writer on a locked ref succeeded")
	}
	if !errdefs.IsUnavailable(err) {
		return fmt.Errorf("a second Writer on a locked ref: %v, want unavailable", err)
	}
	if _, err := s.client.NewContainer(s.ctx, "bad/id"); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("NewContainer with an invalid id: %v, want invalid argument", err)
	}
	if _, err := s.client.ImageService().Create(s.ctx, images.Image{Name: "no-target:1"}); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("an image without a target: %v, want invalid argument", err)
	}
	bad := namespaces.WithNamespace(context.Background(), "bad namespace!")
	if _, err := s.client.ImageService().List(bad); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("a call in an invalid namespace: %v, want invalid argument", err)
	}
	if _, err := s.client.SnapshotService(*snapshotter).Stat(s.ctx, "no-such-snapshot"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("snapshot Stat of an unknown key: %v, want not found", err)
	}
	return nil
}

func checkTaskControl(s *state) error {
	if s.image == nil {
		return errors.New("no image (pull failed)")
	}
	c, err := s.client.NewContainer(s.ctx, "go-c3",
		containerd.WithSnapshotter(*snapshotter),
		containerd.WithNewSnapshot("go-c3-snapshot", s.image),
		containerd.WithNewSpec(oci.WithImageConfig(s.image), oci.WithProcessArgs("sleep", "60")),
		containerd.WithContainerLabels(map[string]string{"app": "go-tier"}),
	)
	if err != nil {
		return fmt.Errorf("NewContainer: %w", err)
	}
	defer c.Delete(s.ctx, containerd.WithSnapshotCleanup)
	cs, err := s.client.Containers(s.ctx, `labels.app==go-tier`)
	if err != nil || len(cs) != 1 || cs[0].ID() != "go-c3" {
		return fmt.Errorf("Containers by label: %v %v", cs, err)
	}
	if cs, err := s.client.Containers(s.ctx, `labels.app==other`); err != nil || len(cs) != 0 {
		return fmt.Errorf("Containers by another label: %v %v", cs, err)
	}
	task, err := c.NewTask(s.ctx, cio.NewCreator(cio.WithStreams(new(bytes.Buffer), io.Discard, io.Discard)))
	if err != nil {
		return fmt.Errorf("NewTask: %w", err)
	}
	defer task.Delete(s.ctx, containerd.WithProcessKill)
	statusC, err := task.Wait(s.ctx)
	if err != nil {
		return fmt.Errorf("Wait: %w", err)
	}
	if err := task.Start(s.ctx); err != nil {
		return fmt.Errorf("Start: %w", err)
	}
	pids, err := task.Pids(s.ctx)
	if err != nil || len(pids) != 1 || pids[0].Pid != task.Pid() {
		return fmt.Errorf("Pids %v (task pid %d): %v", pids, task.Pid(), err)
	}
	if err := task.Pause(s.ctx); err != nil {
		return fmt.Errorf("Pause: %w", err)
	}
	if st, err := task.Status(s.ctx); err != nil || st.Status != containerd.Paused {
		return fmt.Errorf("status after Pause: %v %v", st.Status, err)
	}
	if err := task.Resume(s.ctx); err != nil {
		return fmt.Errorf("Resume: %w", err)
	}
	if st, err := task.Status(s.ctx); err != nil || st.Status != containerd.Running {
		return fmt.Errorf("status after Resume: %v %v", st.Status, err)
	}
	m, err := task.Metrics(s.ctx)
	if err != nil || m == nil || m.Data == nil || m.Timestamp.IsZero() {
		return fmt.Errorf("Metrics: %v %v", m, err)
	}
	if err := task.Kill(s.ctx, syscall.SIGKILL); err != nil {
		return fmt.Errorf("Kill: %w", err)
	}
	select {
	case <-statusC:
	case <-time.After(30 * time.Second):
		return errors.New("the task did not exit in 30s after SIGKILL")
	}
	return nil
}

func checkListFilters(s *state) error {
	if s.image == nil {
		return errors.New("no image (pull failed)")
	}
	imgs, err := s.client.ListImages(s.ctx, `name==`+*ref)
	if err != nil || len(imgs) != 1 || imgs[0].Name() != *ref {
		return fmt.Errorf("ListImages name==: %v %v", imgs, err)
	}
	imgs, err = s.client.ListImages(s.ctx, `target.digest==`+s.image.Target().Digest.String())
	if err != nil || len(imgs) != 1 {
		return fmt.Errorf("ListImages target.digest==: %v %v", imgs, err)
	}
	if imgs, err := s.client.ListImages(s.ctx, `name~=^nothing-like-this$`); err != nil || len(imgs) != 0 {
		return fmt.Errorf("ListImages with no match: %v %v", imgs, err)
	}
	var found []string
	err = s.client.ContentStore().Walk(s.ctx, func(info content.Info) error {
		found = append(found, info.Digest.String())
		return nil
	}, `digest==`+s.image.Target().Digest.String())
	if err != nil || len(found) != 1 {
		return fmt.Errorf("content Walk digest==: %v %v", found, err)
	}
	// The pull labels the manifest with its children (gc references), as containerd's does.
	info, err := s.client.ContentStore().Info(s.ctx, s.image.Target().Digest)
	if err != nil {
		return fmt.Errorf("Info of the manifest: %w", err)
	}
	refs := 0
	for k := range info.Labels {
		if strings.HasPrefix(k, "containerd.io/gc.ref.content.") {
			refs++
		}
	}
	if refs < 2 {
		return fmt.Errorf("the manifest's gc reference labels: %v", info.Labels)
	}
	return nil
}

func checkDiff(s *state) error {
	if s.image == nil {
		return errors.New("no image (pull failed)")
	}
	sn := s.client.SnapshotService(*snapshotter)
	diffIDs, err := s.image.RootFS(s.ctx)
	if err != nil {
		return fmt.Errorf("RootFS: %w", err)
	}
	ctx, done, err := s.client.WithLease(s.ctx)
	if err != nil {
		return fmt.Errorf("WithLease: %w", err)
	}
	defer done(ctx)
	mounts, err := sn.Prepare(ctx, "go-diff-upper", diffIDs[0].String())
	if err != nil {
		return fmt.Errorf("Prepare: %w", err)
	}
	if err := mount.WithTempMount(ctx, mounts, func(root string) error {
		if err := os.WriteFile(root+"/added-by-go", []byte("diff me\n"), 0644); err != nil {
			return err
		}
		return os.Remove(root + "/etc/group")
	}); err != nil {
		return fmt.Errorf("writing into the snapshot: %w", err)
	}
	desc, err := rootfs.CreateDiff(ctx, "go-diff-upper", sn, s.client.DiffService())
	if err != nil {
		return fmt.Errorf("CreateDiff: %w", err)
	}
	if desc.MediaType != ocispec.MediaTypeImageLayerGzip || desc.Size == 0 {
		return fmt.Errorf("diff descriptor %+v", desc)
	}
	if _, err := s.client.ContentStore().Info(ctx, desc.Digest); err != nil {
		return fmt.Errorf("the diff is not in the content store: %w", err)
	}
	// Apply it on a fresh copy of the image's layer: the new file is there and /etc/group is gone.
	mounts, err = sn.Prepare(ctx, "go-diff-apply", diffIDs[0].String())
	if err != nil {
		return fmt.Errorf("Prepare: %w", err)
	}
	if _, err := s.client.DiffService().Apply(ctx, desc, mounts); err != nil {
		return fmt.Errorf("Apply: %w", err)
	}
	return mount.WithReadonlyTempMount(ctx, mounts, func(root string) error {
		b, err := os.ReadFile(root + "/added-by-go")
		if err != nil || string(b) != "diff me\n" {
			return fmt.Errorf("the applied diff's file: %q %v", b, err)
		}
		if _, err := os.Stat(root + "/etc/group"); !os.IsNotExist(err) {
			return fmt.Errorf("the applied diff's whiteout: /etc/group %v", err)
		}
		if _, err := os.Stat(root + "/etc/passwd"); err != nil {
			return fmt.Errorf("the image's /etc/passwd under the applied diff: %v", err)
		}
		return nil
	})
}

func checkPublish(s *state) error {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	ch, errs := s.client.Subscribe(ctx, `topic~="^/strata-go/"`)
	time.Sleep(200 * time.Millisecond)
	if err := s.client.EventService().Publish(s.ctx, "/strata-go/hello", &eventtypes.ImageCreate{Name: "published"}); err != nil {
		return fmt.Errorf("Publish: %w", err)
	}
	if err := s.client.EventService().Publish(s.ctx, "bad topic", &eventtypes.ImageCreate{Name: "x"}); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("Publish on an invalid topic: %v, want invalid argument", err)
	}
	select {
	case env := <-ch:
		v, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			return fmt.Errorf("event: %w", err)
		}
		e, ok := v.(*eventtypes.ImageCreate)
		if !ok || e.Name != "published" || env.Topic != "/strata-go/hello" || env.Namespace != *namespace {
			return fmt.Errorf("received %s %s %#v", env.Namespace, env.Topic, v)
		}
	case err := <-errs:
		return fmt.Errorf("subscription: %v", err)
	case <-time.After(10 * time.Second):
		return errors.New("no event after 10s")
	}
	return nil
}

func checkFetchUnpack(s *state) error {
	ctx := namespaces.WithNamespace(s.ctx, *namespace+"-fetch")
	img, err := s.client.Fetch(ctx, *ref, resolver())
	if err != nil {
		return fmt.Errorf("Fetch: %w", err)
	}
	i := containerd.NewImage(s.client, img)
	if ok, err := i.IsUnpacked(ctx, "native"); err != nil || ok {
		return fmt.Errorf("IsUnpacked after Fetch: %v %v, want false", ok, err)
	}
	if err := i.Unpack(ctx, "native"); err != nil {
		return fmt.Errorf("Unpack on native: %w", err)
	}
	if ok, err := i.IsUnpacked(ctx, "native"); err != nil || !ok {
		return fmt.Errorf("IsUnpacked after Unpack: %v %v", ok, err)
	}
	size, err := i.Size(ctx)
	if err != nil || size <= 0 {
		return fmt.Errorf("Size: %d %v", size, err)
	}
	usage, err := i.Usage(ctx, containerd.WithSnapshotUsage())
	if err != nil || usage <= size {
		return fmt.Errorf("Usage with snapshots %d (content %d): %v", usage, size, err)
	}
	return nil
}

func checkContainerLabels(s *state) error {
	if s.image == nil {
		return errors.New("no image (pull failed)")
	}
	c, err := s.client.NewContainer(s.ctx, "go-c4",
		containerd.WithNewSpec(oci.WithProcessArgs("true")),
		containerd.WithContainerLabels(map[string]string{"a": "1"}),
		containerd.WithContainerExtension("strata.test/ext", &eventtypes.ImageCreate{Name: "in an extension"}),
	)
	if err != nil {
		return fmt.Errorf("NewContainer: %w", err)
	}
	defer c.Delete(s.ctx)
	labels, err := c.SetLabels(s.ctx, map[string]string{"b": "2"})
	if err != nil {
		return fmt.Errorf("SetLabels: %w", err)
	}
	if len(labels) != 2 || labels["a"] != "1" || labels["b"] != "2" {
		return fmt.Errorf("labels after SetLabels: %v", labels)
	}
	if labels, err = c.SetLabels(s.ctx, map[string]string{"a": ""}); err != nil || len(labels) != 1 || labels["b"] != "2" {
		return fmt.Errorf("labels after clearing a: %v %v", labels, err)
	}
	ext, err := c.Extensions(s.ctx)
	if err != nil {
		return fmt.Errorf("Extensions: %w", err)
	}
	any, ok := ext["strata.test/ext"]
	if !ok {
		return fmt.Errorf("extensions %v", ext)
	}
	v, err := typeurl.UnmarshalAny(&any)
	if err != nil || v.(*eventtypes.ImageCreate).Name != "in an extension" {
		return fmt.Errorf("the extension reads back as %#v %v", v, err)
	}
	return nil
}

func checkIngests(s *state) error {
	cs := s.client.ContentStore()
	for _, ref := range []string{"go-ingest-a", "go-ingest-b"} {
		w, err := cs.Writer(s.ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Size: 100}))
		if err != nil {
			return fmt.Errorf("Writer %s: %w", ref, err)
		}
		if _, err := w.Write([]byte("partial")); err != nil {
			return fmt.Errorf("Write: %w", err)
		}
		w.Close()
	}
	st, err := cs.Status(s.ctx, "go-ingest-a")
	if err != nil || st.Offset != 7 || st.Total != 100 || st.Ref != "go-ingest-a" {
		return fmt.Errorf("Status: %+v %v", st, err)
	}
	if st.StartedAt.IsZero() || st.UpdatedAt.Before(st.StartedAt) {
		return fmt.Errorf("Status times: %+v", st)
	}
	sts, err := cs.ListStatuses(s.ctx, `ref==go-ingest-b`)
	if err != nil || len(sts) != 1 || sts[0].Ref != "go-ingest-b" {
		return fmt.Errorf("ListStatuses ref==: %v %v", sts, err)
	}
	sts, err = cs.ListStatuses(s.ctx, `ref~="^go-ingest-"`)
	if err != nil || len(sts) != 2 {
		return fmt.Errorf("ListStatuses ref~=: %v %v", sts, err)
	}
	// Resuming picks up where it was.
	w, err := cs.Writer(s.ctx, content.WithRef("go-ingest-a"))
	if err != nil {
		return fmt.Errorf("Writer to resume: %w", err)
	}
	ws, err := w.Status()
	w.Close()
	if err != nil || ws.Offset != 7 {
		return fmt.Errorf("resumed writer status: %+v %v", ws, err)
	}
	for _, ref := range []string{"go-ingest-a", "go-ingest-b"} {
		if err := cs.Abort(s.ctx, ref); err != nil {
			return fmt.Errorf("Abort %s: %w", ref, err)
		}
	}
	if _, err := cs.Status(s.ctx, "go-ingest-a"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("Status after Abort: %v, want not found", err)
	}
	if err := cs.Abort(s.ctx, "go-ingest-a"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("a second Abort: %v, want not found", err)
	}
	return nil
}

func checkImageDeleteSync(s *state) error {
	// The imported copy lives alone in its namespace: deleting its image with a synchronous collection takes its
	// content (and nothing of the first namespace's).
	ctx := namespaces.WithNamespace(s.ctx, *namespace+"-import")
	is := s.client.ImageService()
	img, err := is.Get(ctx, *ref)
	if err != nil {
		return fmt.Errorf("the imported image: %w", err)
	}
	if err := is.Delete(ctx, *ref, images.SynchronousDelete()); err != nil {
		return fmt.Errorf("Delete with SynchronousDelete: %w", err)
	}
	if _, err := s.client.ContentStore().Info(ctx, img.Target.Digest); !errdefs.IsNotFound(err) {
		return fmt.Errorf("the deleted image's manifest after a synchronous collection: %v, want not found", err)
	}
	if _, err := s.client.ContentStore().Info(s.ctx, img.Target.Digest); err != nil {
		return fmt.Errorf("the first namespace's manifest: %v", err)
	}
	return nil
}
