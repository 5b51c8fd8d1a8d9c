// gobench drives one daemon (stratad or containerd) through containerd 1.6's Go client library with the call
// patterns of real clients, and prints one JSON object of results on stdout. bench/gobench.ts builds it, runs it
// against both daemons in alternating pairs and prints the ratios.
//
//	gobench -address SOCK -workload lifecycle|chain|content|small|concurrent [-ops N] [-depth N] [-size BYTES]
//	        [-callers 1,8,64] [-snapshotter overlayfs] [-namespace bench]
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/snapshots"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

type result map[string]interface{}

func main() {
	address := flag.String("address", "", "daemon socket")
	workload := flag.String("workload", "lifecycle", "lifecycle|chain|content|small|concurrent")
	ops := flag.Int("ops", 300, "operations (cycles) to time")
	warmup := flag.Int("warmup", 20, "untimed cycles first")
	depth := flag.Int("depth", 64, "chain depth")
	size := flag.Int64("size", 64<<20, "content blob size")
	callers := flag.String("callers", "1,8,64", "concurrent callers")
	snapshotter := flag.String("snapshotter", "overlayfs", "snapshotter")
	namespace := flag.String("namespace", "bench", "namespace")
	flag.Parse()
	if *address == "" {
		fail(fmt.Errorf("-address is required"))
	}
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(*namespace))
	if err != nil {
		fail(err)
	}
	defer client.Close()
	ctx := context.Background()
	// Everything the benchmark makes is held by one lease, so neither daemon's GC collects it mid-run.
	lease, err := client.LeasesService().Create(ctx, leases.WithRandomID(), leases.WithExpiration(2*time.Hour))
	if err != nil {
		fail(err)
	}
	ctx = leases.WithLease(ctx, lease.ID)
	defer client.LeasesService().Delete(context.Background(), lease, leases.SynchronousDelete)

	b := &bench{client: client, sn: client.SnapshotService(*snapshotter), prefix: strconv.FormatInt(time.Now().UnixNano(), 36)}
	var out result
	switch *workload {
	case "lifecycle":
		out = b.lifecycle(ctx, *ops, *warmup)
	case "chain":
		out = b.chain(ctx, *depth, *ops, *warmup)
	case "content":
		out = b.content(ctx, *size)
	case "small":
		out = b.small(ctx, *ops, *warmup)
	case "concurrent":
		out = b.concurrent(ctx, *ops, *callers)
	default:
		fail(fmt.Errorf("unknown workload %q", *workload))
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "gobench: %v\n", err)
	os.Exit(1)
}

func must(err error) {
	if err != nil {
		fail(err)
	}
}

type bench struct {
	client *containerd.Client
	sn     snapshots.Snapshotter
	prefix string
	n      int
	mu     sync.Mutex
}

func (b *bench) key(what string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n++
	return fmt.Sprintf("%s-%s-%d", b.prefix, what, b.n)
}

// base commits a parent with a small busybox-like tree (the static busybox binary and a few links and
// directories) written through a real mount, so overlay mounts of its children have a real lowerdir.
func (b *bench) base(ctx context.Context) string {
	key := b.key("base-active")
	mounts, err := b.sn.Prepare(ctx, key, "")
	must(err)
	dir, err := ioutil.TempDir("", "gobench-mnt-")
	must(err)
	defer os.RemoveAll(dir)
	must(mount.All(mounts, dir))
	bin, err := ioutil.ReadFile("/bin/busybox")
	if err != nil {
		bin = bytes.Repeat([]byte{0x7f}, 1<<20)
	}
	for _, d := range []string{"bin", "etc", "tmp", "var/log", "usr/bin"} {
		must(os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	must(ioutil.WriteFile(filepath.Join(dir, "bin", "busybox"), bin, 0o755))
	for _, l := range []string{"sh", "ls", "cat", "echo", "sleep"} {
		must(os.Symlink("busybox", filepath.Join(dir, "bin", l)))
	}
	must(ioutil.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644))
	must(mount.UnmountAll(dir, 0))
	name := b.key("base")
	must(b.sn.Commit(ctx, name, key))
	return name
}

type timings map[string][]time.Duration

func (t timings) add(op string, d time.Duration) { t[op] = append(t[op], d) }

func p50ms(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[len(s)/2].Nanoseconds()) / 1e6
}

func timed(t timings, op string, f func() error) {
	start := time.Now()
	err := f()
	if t != nil {
		t.add(op, time.Since(start))
	}
	must(err)
}

// One cycle: Prepare, Mounts, Commit, Stat, Remove, as a client unpacking or running a container does.
func (b *bench) cycle(ctx context.Context, base string, t timings) {
	key, name := b.key("active"), b.key("committed")
	timed(t, "prepare", func() error { _, err := b.sn.Prepare(ctx, key, base); return err })
	timed(t, "mounts", func() error { _, err := b.sn.Mounts(ctx, key); return err })
	timed(t, "commit", func() error { return b.sn.Commit(ctx, name, key) })
	timed(t, "stat", func() error { _, err := b.sn.Stat(ctx, name); return err })
	timed(t, "remove", func() error { return b.sn.Remove(ctx, name) })
}

func (b *bench) lifecycle(ctx context.Context, ops, warmup int) result {
	base := b.base(ctx)
	for i := 0; i < warmup; i++ {
		b.cycle(ctx, base, nil)
	}
	t := timings{}
	start := time.Now()
	for i := 0; i < ops; i++ {
		b.cycle(ctx, base, t)
	}
	elapsed := time.Since(start)
	out := result{"workload": "lifecycle", "ops": ops, "ops_per_s": float64(ops) / elapsed.Seconds()}
	for op, ds := range t {
		out[op+"_p50_ms"] = p50ms(ds)
	}
	return out
}

func (b *bench) chain(ctx context.Context, depth, ops, warmup int) result {
	parent := ""
	for i := 0; i < depth; i++ {
		key, name := b.key("chain-active"), b.key("chain")
		_, err := b.sn.Prepare(ctx, key, parent)
		must(err)
		must(b.sn.Commit(ctx, name, key))
		parent = name
	}
	t := timings{}
	for i := 0; i < warmup+ops; i++ {
		key := b.key("top")
		start := time.Now()
		_, err := b.sn.Prepare(ctx, key, parent)
		must(err)
		_, err = b.sn.Mounts(ctx, key)
		must(err)
		if i >= warmup {
			t.add("prepare_mounts", time.Since(start))
		}
		must(b.sn.Remove(ctx, key))
	}
	return result{"workload": "chain", "depth": depth, "ops": ops, "prepare_mounts_p50_ms": p50ms(t["prepare_mounts"])}
}

func (b *bench) content(ctx context.Context, size int64) result {
	cs := b.client.ContentStore()
	data := make([]byte, size)
	_, err := rand.Read(data)
	must(err)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: size}
	start := time.Now()
	// A plain reader (no WriterTo), so content.Copy sends 1 MiB writes as a client streaming a download does.
	must(content.WriteBlob(ctx, cs, b.key("blob"), struct{ io.Reader }{bytes.NewReader(data)}, desc))
	write := time.Since(start)
	ra, err := cs.ReaderAt(ctx, desc)
	must(err)
	buf := make([]byte, 1<<20)
	start = time.Now()
	for off := int64(0); off < size; off += int64(len(buf)) {
		n, err := ra.ReadAt(buf, off)
		if err != nil && !(n > 0 && off+int64(n) == size) {
			fail(fmt.Errorf("ReadAt %d: %v", off, err))
		}
		if !bytes.Equal(buf[:n], data[off:off+int64(n)]) {
			fail(fmt.Errorf("ReadAt %d: wrong bytes", off))
		}
	}
	read := time.Since(start)
	must(ra.Close())
	return result{"workload": "content", "bytes": size, "write_mb_s": float64(size) / 1e6 / write.Seconds(), "read_at_mb_s": float64(size) / 1e6 / read.Seconds()}
}

// Many small reads: Version (the gRPC layer alone), content Info, snapshot Stat, snapshot Walk (List), image List, as a CRI poller does.
func (b *bench) small(ctx context.Context, ops, warmup int) result {
	cs := b.client.ContentStore()
	data := []byte("small-call-benchmark")
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	must(content.WriteBlob(ctx, cs, b.key("small"), bytes.NewReader(data), desc))
	base := b.base(ctx)
	t := timings{}
	for i := 0; i < warmup+ops; i++ {
		tt := t
		if i < warmup {
			tt = nil
		}
		timed(tt, "version", func() error { _, err := b.client.Version(ctx); return err })
		timed(tt, "content_info", func() error { _, err := cs.Info(ctx, desc.Digest); return err })
		timed(tt, "snapshot_stat", func() error { _, err := b.sn.Stat(ctx, base); return err })
		timed(tt, "snapshot_list", func() error {
			return b.sn.Walk(ctx, func(context.Context, snapshots.Info) error { return nil })
		})
		timed(tt, "image_list", func() error { _, err := b.client.ImageService().List(ctx); return err })
	}
	out := result{"workload": "small", "ops": ops}
	total := time.Duration(0)
	for op, ds := range t {
		out[op+"_p50_ms"] = p50ms(ds)
		for _, d := range ds {
			total += d
		}
	}
	out["calls_per_s"] = float64(5*ops) / total.Seconds()
	return out
}

// The lifecycle from N concurrent callers at once, each with its own keys: total cycles per second.
func (b *bench) concurrent(ctx context.Context, ops int, callers string) result {
	base := b.base(ctx)
	out := result{"workload": "concurrent"}
	for _, s := range strings.Split(callers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		must(err)
		per := ops / n
		if per < 2 {
			per = 2
		}
		var wg sync.WaitGroup
		start := time.Now()
		for c := 0; c < n; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < per; i++ {
					b.cycle(ctx, base, nil)
				}
			}()
		}
		wg.Wait()
		out[fmt.Sprintf("c%d_ops_per_s", n)] = float64(n*per) / time.Since(start).Seconds()
	}
	return out
}
