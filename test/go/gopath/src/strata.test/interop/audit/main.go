// Command audit checks, through containerd's Go client library (1.6.20) and its raw gRPC API clients, the answers
// in which Strata's services once differed from containerd's service and store code (issue 11's audit; the
// table at the end of docs/go-interop.md). It prints one line per check, "PASS <name>" or "FAIL <name>: <why>";
// test/interop-go/audit.test.ts asserts on those lines.
//
//	audit -address SOCK [-snapshotter native]
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"flag"

	"github.com/containerd/containerd"
	eventtypes "github.com/containerd/containerd/api/events"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/typeurl"
	ptypes "github.com/gogo/protobuf/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const ns = "go-audit"

var (
	address     = flag.String("address", "", "stratad's socket")
	snapshotter = flag.String("snapshotter", "native", "the snapshotter")
	only        = flag.String("only", "", "run only the checks whose names start with this")
	failed      bool
)

type state struct {
	client *containerd.Client
	ctx    context.Context
}

func main() {
	flag.Parse()
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(ns))
	if err != nil {
		fmt.Printf("FAIL connect: %v\n", err)
		os.Exit(1)
	}
	defer client.Close()
	s := &state{client: client, ctx: namespaces.WithNamespace(context.Background(), ns)}
	checks := []struct {
		name string
		fn   func(*state) error
	}{
		{"content Read with a negative offset or size reads from the start and to the end", checkContentRead},
		{"content Write with an unknown action answers the offset", checkWriteUnknownAction},
		{"content Abort removes an ingest under an open writer, whose commit then fails", checkAbortOpenWriter},
		{"namespaces Update answers an empty namespace, takes labels.<key> paths only, publishes the request", checkNamespaceUpdate},
		{"leases are listed by id; calls on an unknown lease are not found", checkLeases},
		{"events Forward keeps the envelope's timestamp and refuses none", checkForward},
		{"introspection lists the service plugins and filters on type and id only", checkIntrospection},
		{"snapshots answer empty keys, existing keys and names, children and update paths", checkSnapshotErrors},
		{"snapshots walk in key order with filters; usage of an active snapshot; events", checkSnapshotWalk},
		{"content and container filters take containerd's fields only", checkFilterFields},
		{"namespaces appear when something is first made in them, not on failed or read-only calls", checkImplicitNamespaces},
		{"a malformed filter is UNKNOWN in snapshot walks and event subscriptions, invalid argument elsewhere", checkBadFilters},
		{"a label set to an empty value is not stored", checkEmptyLabels},
		{"tasks answer unknown tasks and processes, repeated and out-of-order calls as containerd's runc shim", checkTaskErrors},
		{"tasks publish containerd's events with their fields", checkTaskEvents},
		{"tasks answer metrics filters and waits on tasks that never started as containerd", checkTaskMetricsWaits},
		{"tasks refuse a runtime whose shim is not installed and run the runc ones", checkTaskRuntimes},
		{"health answers the server's status and unknown services; version answers", checkHealthVersion},
		{"diff refuses unknown media types, labels the blob it writes, applies", checkDiff},
	}
	for _, c := range checks {
		if *only != "" && !strings.HasPrefix(c.name, *only) {
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
				failed = true
				fmt.Printf("FAIL %s: %s\n", c.name, strings.ReplaceAll(err.Error(), "\n", " | "))
			} else {
				fmt.Printf("PASS %s\n", c.name)
			}
		case <-time.After(60 * time.Second):
			failed = true
			fmt.Printf("FAIL %s: timed out after 60s\n", c.name)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func writeBlob(s *state, ref string, data []byte) (digest.Digest, error) {
	dgst := digest.FromBytes(data)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: dgst, Size: int64(len(data))}
	if err := content.WriteBlob(s.ctx, s.client.ContentStore(), ref, strings.NewReader(string(data)), desc); err != nil && !errdefs.IsAlreadyExists(err) {
		return "", fmt.Errorf("WriteBlob: %w", err)
	}
	return dgst, nil
}

func readRaw(s *state, dgst digest.Digest, offset, size int64) (string, error) {
	rc, err := contentapi.NewContentClient(s.client.Conn()).Read(s.ctx, &contentapi.ReadContentRequest{Digest: dgst, Offset: offset, Size_: size})
	if err != nil {
		return "", err
	}
	var out []byte
	for {
		r, err := rc.Recv()
		if err == io.EOF {
			return string(out), nil
		}
		if err != nil {
			return string(out), err
		}
		out = append(out, r.Data...)
	}
}

func checkContentRead(s *state) error {
	dgst, err := writeBlob(s, "audit-read", []byte("0123456789"))
	if err != nil {
		return err
	}
	for _, c := range []struct {
		offset, size int64
		want         string
	}{{-5, 0, "0123456789"}, {-5, 3, "012"}, {2, -1, "23456789"}, {4, 100, "456789"}, {10, 0, ""}} {
		got, err := readRaw(s, dgst, c.offset, c.size)
		if err != nil || got != c.want {
			return fmt.Errorf("Read offset %d size %d: %q %v, want %q", c.offset, c.size, got, err, c.want)
		}
	}
	if _, err := readRaw(s, dgst, 11, 0); status.Code(err) != codes.OutOfRange {
		return fmt.Errorf("Read past the end: %v, want out of range", err)
	}
	return nil
}

func checkWriteUnknownAction(s *state) error {
	wc, err := contentapi.NewContentClient(s.client.Conn()).Write(s.ctx)
	if err != nil {
		return err
	}
	if err := wc.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteActionWrite, Ref: "audit-action", Data: []byte("abc")}); err != nil {
		return err
	}
	if r, err := wc.Recv(); err != nil || r.Offset != 3 {
		return fmt.Errorf("WRITE: %v %v", r, err)
	}
	if err := wc.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteAction(7), Ref: "audit-action", Data: []byte("ignored")}); err != nil {
		return err
	}
	r, err := wc.Recv()
	if err != nil {
		return fmt.Errorf("action 7: %v, want an answer", errdefs.FromGRPC(err))
	}
	// containerd's server keeps one answer for the session: the WRITE's digest is still in it.
	if r.Action != contentapi.WriteAction(7) || r.Offset != 3 || r.Digest != digest.FromString("abc") {
		return fmt.Errorf("action 7 answered %+v, want the action, offset 3 and the digest so far", r)
	}
	if err := wc.CloseSend(); err != nil {
		return err
	}
	// After the client's end, the server sends its last answer once more (a deferred Send), then ends.
	last, err := wc.Recv()
	if err != nil || last.Action != contentapi.WriteAction(7) || last.Offset != 3 {
		return fmt.Errorf("after CloseSend: %+v %v, want the last answer again", last, err)
	}
	if _, err := wc.Recv(); err != io.EOF {
		return fmt.Errorf("stream end: %v, want EOF", err)
	}
	if err := checkWriteSession(s); err != nil {
		return err
	}
	st, err := s.client.ContentStore().Status(s.ctx, "audit-action")
	if err != nil || st.Offset != 3 {
		return fmt.Errorf("Status after the unknown action: %+v %v, want offset 3", st, err)
	}
	return s.client.ContentStore().Abort(s.ctx, "audit-action")
}

func checkAbortOpenWriter(s *state) error {
	cs := s.client.ContentStore()
	w, err := cs.Writer(s.ctx, content.WithRef("audit-abort"))
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := w.Write([]byte("partial")); err != nil {
		return err
	}
	if st, err := cs.Status(s.ctx, "audit-abort"); err != nil || st.Offset != 7 {
		return fmt.Errorf("Status: %+v %v", st, err)
	}
	start := time.Now()
	if err := cs.Abort(s.ctx, "audit-abort"); err != nil {
		return fmt.Errorf("Abort under an open writer: %v, want success", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		return fmt.Errorf("Abort waited %v for the writer", d)
	}
	if _, err := cs.Status(s.ctx, "audit-abort"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("Status after Abort: %v, want not found", err)
	}
	if err := w.Commit(s.ctx, 0, ""); err == nil {
		return errors.New("Commit of an aborted ingest succeeded")
	}
	return nil
}

func checkNamespaceUpdate(s *state) error {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	evs, errs := s.client.Subscribe(ctx, `topic=="/namespaces/update"`)
	time.Sleep(200 * time.Millisecond)
	store := s.client.NamespaceService()
	if err := store.Create(s.ctx, "audit-upd", map[string]string{"a": "1", "b": "2"}); err != nil {
		return err
	}
	api := namespacesapi.NewNamespacesClient(s.client.Conn())
	resp, err := api.Update(s.ctx, &namespacesapi.UpdateNamespaceRequest{
		Namespace:  namespacesapi.Namespace{Name: "audit-upd", Labels: map[string]string{"a": "9", "c": "3"}},
		UpdateMask: &ptypes.FieldMask{Paths: []string{"labels.a", "labels.b"}},
	})
	if err != nil {
		return fmt.Errorf("Update: %v", err)
	}
	if resp.Namespace.Name != "" || len(resp.Namespace.Labels) != 0 {
		return fmt.Errorf("Update answered %+v, want an empty namespace", resp.Namespace)
	}
	labels, err := store.Labels(s.ctx, "audit-upd")
	if err != nil || fmt.Sprint(labels) != "map[a:9]" {
		return fmt.Errorf("labels after the update: %v %v, want map[a:9]", labels, err)
	}
	_, err = api.Update(s.ctx, &namespacesapi.UpdateNamespaceRequest{
		Namespace:  namespacesapi.Namespace{Name: "audit-upd", Labels: map[string]string{"z": "1"}},
		UpdateMask: &ptypes.FieldMask{Paths: []string{"labels"}},
	})
	if !errdefs.IsInvalidArgument(errdefs.FromGRPC(err)) {
		return fmt.Errorf(`Update with the path "labels": %v, want invalid argument`, err)
	}
	select {
	case env := <-evs:
		if env.Namespace != ns {
			return fmt.Errorf("update event in namespace %q, want the caller's %q", env.Namespace, ns)
		}
		v, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			return err
		}
		e, ok := v.(*eventtypes.NamespaceUpdate)
		if !ok || e.Name != "audit-upd" || fmt.Sprint(e.Labels) != "map[a:9 c:3]" {
			return fmt.Errorf("update event %+v, want the request's name and labels", v)
		}
	case err := <-errs:
		return fmt.Errorf("subscription: %v", err)
	case <-time.After(5 * time.Second):
		return errors.New("no /namespaces/update event")
	}
	return nil
}

func checkLeases(s *state) error {
	lm := s.client.LeasesService()
	for _, id := range []string{"audit-b", "audit-c", "audit-a"} {
		if _, err := lm.Create(s.ctx, leases.WithID(id)); err != nil {
			return err
		}
		time.Sleep(2 * time.Millisecond)
	}
	all, err := lm.List(s.ctx, `id~="^audit-"`)
	if err != nil {
		return err
	}
	var ids []string
	for _, l := range all {
		ids = append(ids, l.ID)
	}
	if strings.Join(ids, ",") != "audit-a,audit-b,audit-c" {
		return fmt.Errorf("List order %v, want by id", ids)
	}
	unknown := leases.Lease{ID: "audit-none"}
	if err := lm.Delete(s.ctx, unknown); !errdefs.IsNotFound(err) {
		return fmt.Errorf("Delete: %v, want not found", err)
	}
	if err := lm.AddResource(s.ctx, unknown, leases.Resource{ID: "x", Type: "no-such-type"}); !errdefs.IsNotFound(err) {
		return fmt.Errorf("AddResource (a bad resource too): %v, want not found", err)
	}
	if err := lm.DeleteResource(s.ctx, unknown, leases.Resource{ID: "x", Type: "ingests"}); !errdefs.IsNotFound(err) {
		return fmt.Errorf("DeleteResource: %v, want not found", err)
	}
	if _, err := lm.ListResources(s.ctx, unknown); !errdefs.IsNotFound(err) {
		return fmt.Errorf("ListResources: %v, want not found", err)
	}
	// containerd stores a gc.expire label that is not a time (its collector ignores it).
	if l, err := lm.Create(s.ctx, leases.WithID("audit-bad-expire"), leases.WithLabels(map[string]string{"containerd.io/gc.expire": "tomorrow"})); err != nil || l.Labels["containerd.io/gc.expire"] != "tomorrow" {
		return fmt.Errorf("Create with a gc.expire that is not a time: %+v %v, want it stored", l, err)
	}
	if err := lm.AddResource(s.ctx, leases.Lease{ID: "audit-a"}, leases.Resource{ID: "x", Type: "no-such-type"}); !errdefs.IsNotImplemented(err) {
		return fmt.Errorf("AddResource of an unknown type: %v, want not implemented", err)
	}
	return nil
}

func checkForward(s *state) error {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	evs, errs := s.client.Subscribe(ctx, `topic=="/audit/forward"`)
	time.Sleep(200 * time.Millisecond)
	any, err := typeurl.MarshalAny(&eventtypes.NamespaceCreate{Name: "forwarded"})
	if err != nil {
		return err
	}
	at := time.Date(2001, 2, 3, 4, 5, 6, 123456789, time.UTC)
	es := s.client.EventService()
	if err := es.Forward(s.ctx, &events.Envelope{Timestamp: at, Namespace: "elsewhere", Topic: "/audit/forward", Event: any}); err != nil {
		return fmt.Errorf("Forward: %v", err)
	}
	select {
	case env := <-evs:
		if !env.Timestamp.Equal(at) || env.Namespace != "elsewhere" {
			return fmt.Errorf("forwarded envelope %s in %q, want %s in \"elsewhere\"", env.Timestamp.Format(time.RFC3339Nano), env.Namespace, at.Format(time.RFC3339Nano))
		}
	case err := <-errs:
		return fmt.Errorf("subscription: %v", err)
	case <-time.After(5 * time.Second):
		return errors.New("no forwarded event")
	}
	// The event's bytes pass through as sent, even a field this server's types do not know (field 15 here).
	extra := &ptypes.Any{TypeUrl: any.TypeUrl, Value: append(append([]byte{}, any.Value...), 0x78, 0x01)}
	if err := es.Forward(s.ctx, &events.Envelope{Timestamp: at, Namespace: "elsewhere", Topic: "/audit/forward", Event: extra}); err != nil {
		return fmt.Errorf("Forward: %v", err)
	}
	select {
	case env := <-evs:
		if env.Event.TypeUrl != extra.TypeUrl || string(env.Event.Value) != string(extra.Value) {
			return fmt.Errorf("forwarded event %q %x, want %q %x", env.Event.TypeUrl, env.Event.Value, extra.TypeUrl, extra.Value)
		}
	case err := <-errs:
		return fmt.Errorf("subscription: %v", err)
	case <-time.After(5 * time.Second):
		return errors.New("no second forwarded event")
	}
	if err := es.Forward(s.ctx, &events.Envelope{Namespace: "elsewhere", Topic: "/audit/forward", Event: any}); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("Forward without a timestamp: %v, want invalid argument", err)
	}
	if err := es.Forward(s.ctx, &events.Envelope{Timestamp: at, Namespace: "elsewhere", Topic: "no-slash", Event: any}); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("Forward with a bad topic: %v, want invalid argument", err)
	}
	return nil
}

func checkIntrospection(s *state) error {
	in := s.client.IntrospectionService()
	resp, err := in.Plugins(s.ctx, []string{`type==io.containerd.service.v1`})
	if err != nil {
		return err
	}
	var ids []string
	for _, p := range resp.Plugins {
		if p.InitErr != nil {
			return fmt.Errorf("service plugin %s failed: %v", p.ID, p.InitErr)
		}
		ids = append(ids, p.ID)
	}
	sort.Strings(ids)
	want := "containers-service,content-service,diff-service,images-service,introspection-service,leases-service,namespaces-service,snapshots-service,tasks-service"
	if strings.Join(ids, ",") != want {
		return fmt.Errorf("service plugins %v, want %s", ids, want)
	}
	resp, err = in.Plugins(s.ctx, []string{`type==io.containerd.grpc.v1,id==content`})
	if err != nil || len(resp.Plugins) != 1 {
		return fmt.Errorf("grpc content plugin: %v %v", resp, err)
	}
	reqs := strings.Join(resp.Plugins[0].Requires, ",")
	if !strings.Contains(reqs, "io.containerd.service.v1") {
		return fmt.Errorf("the content grpc plugin requires %s, want the service plugins among them", reqs)
	}
	// A skipped plugin: containerd's skip error is no error kind, so its code is UNKNOWN ("skip" to ctr).
	resp, err = in.Plugins(s.ctx, []string{`type==io.containerd.snapshotter.v1,id==aufs`})
	if err != nil || len(resp.Plugins) != 1 || resp.Plugins[0].InitErr == nil {
		return fmt.Errorf("the aufs snapshotter: %v %v, want it listed as skipped", resp, err)
	}
	if ie := resp.Plugins[0].InitErr; ie.Code != int32(codes.Unknown) || !strings.HasSuffix(ie.Message, "skip plugin") {
		return fmt.Errorf("skipped plugin's error %d %q, want UNKNOWN ending in \"skip plugin\"", ie.Code, ie.Message)
	}
	// containerd's adaptor matches plugins on type and id only.
	for _, f := range []string{`platforms==linux/amd64`, `capabilities`, `platforms`, `requires`} {
		resp, err = in.Plugins(s.ctx, []string{f})
		if err != nil || len(resp.Plugins) != 0 {
			return fmt.Errorf("filter %s: %d plugins %v, want none", f, len(resp.Plugins), err)
		}
	}
	return nil
}

func checkSnapshotErrors(s *state) error {
	sn := s.client.SnapshotService(*snapshotter)
	if _, err := sn.Stat(s.ctx, ""); !errdefs.IsNotFound(err) {
		return fmt.Errorf(`Stat(""): %v, want not found`, err)
	}
	if _, err := sn.Mounts(s.ctx, ""); !errdefs.IsNotFound(err) {
		return fmt.Errorf(`Mounts(""): %v, want not found`, err)
	}
	if _, err := sn.Usage(s.ctx, ""); !errdefs.IsNotFound(err) {
		return fmt.Errorf(`Usage(""): %v, want not found`, err)
	}
	if err := sn.Remove(s.ctx, ""); !errdefs.IsNotFound(err) {
		return fmt.Errorf(`Remove(""): %v, want not found`, err)
	}
	if _, err := sn.Update(s.ctx, snapshots.Info{Name: ""}); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf(`Update of "": %v, want invalid argument`, err)
	}
	// (The client library names its default snapshotter when given none: the raw API sends none.)
	if _, err := snapshotsapi.NewSnapshotsClient(s.client.Conn()).Stat(s.ctx, &snapshotsapi.StatSnapshotRequest{Key: "x"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "snapshotter argument missing") {
		return fmt.Errorf("no snapshotter named: %v, want invalid argument", err)
	}
	if _, err := sn.Prepare(s.ctx, "e-active", ""); err != nil {
		return err
	}
	if _, err := sn.Prepare(s.ctx, "e-active", ""); !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("Prepare of an existing key: %v, want already exists", err)
	}
	if err := sn.Commit(s.ctx, "e-base", "e-active", snapshots.WithLabels(map[string]string{"keep": "1"})); err != nil {
		return err
	}
	if _, err := sn.Prepare(s.ctx, "e-child", "e-base"); err != nil {
		return err
	}
	if _, err := sn.Prepare(s.ctx, "e-on-active", "e-child"); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("Prepare on an active parent: %v, want invalid argument", err)
	}
	if err := sn.Commit(s.ctx, "e-base", "e-child"); !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("Commit to an existing name: %v, want already exists", err)
	}
	if err := sn.Commit(s.ctx, "e-base", "no-such-key"); !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("Commit of an unknown key to an existing name: %v, want already exists (the name is checked first)", err)
	}
	if err := sn.Commit(s.ctx, "e-new", "no-such-key"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("Commit of an unknown key: %v, want not found", err)
	}
	if _, err := sn.View(s.ctx, "e-view", "e-base"); err != nil {
		return err
	}
	// (containerd's native snapshotter fails earlier here, UNKNOWN with a host path; overlayfs as below.)
	if err := sn.Commit(s.ctx, "e-from-view", "e-view"); !errdefs.IsFailedPrecondition(err) {
		return fmt.Errorf("Commit of a view: %v, want failed precondition", err)
	}
	if _, err := sn.Mounts(s.ctx, "e-base"); !errdefs.IsFailedPrecondition(err) {
		return fmt.Errorf("Mounts of a committed snapshot: %v, want failed precondition", err)
	}
	if u, err := sn.Usage(s.ctx, "e-base"); err != nil || u.Inodes < 1 {
		return fmt.Errorf("Usage of a committed snapshot: %+v %v", u, err)
	}
	if _, err := sn.Prepare(s.ctx, "e-orphan", "no-such-parent"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("Prepare on an unknown parent: %v, want not found", err)
	}
	if _, err := sn.Prepare(s.ctx, "e-bad-label", "", snapshots.WithLabels(map[string]string{"k": strings.Repeat("v", 5000)})); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("Prepare with a label over 4096 bytes: %v, want invalid argument", err)
	}
	if err := sn.Remove(s.ctx, "e-base"); !errdefs.IsFailedPrecondition(err) {
		return fmt.Errorf("Remove of a snapshot with children: %v, want failed precondition", err)
	}
	info, err := sn.Update(s.ctx, snapshots.Info{Name: "e-base", Labels: map[string]string{"x": "1", "y": "2"}}, "labels.x", "labels.keep")
	if err != nil || fmt.Sprint(info.Labels) != "map[x:1]" || info.Kind != snapshots.KindCommitted || info.Name != "e-base" {
		return fmt.Errorf("Update labels.x and labels.keep: %+v %v, want labels map[x:1]", info, err)
	}
	info, err = sn.Update(s.ctx, snapshots.Info{Name: "e-base", Labels: map[string]string{"z": "3"}}, "labels")
	if err != nil || fmt.Sprint(info.Labels) != "map[z:3]" {
		return fmt.Errorf("Update labels: %+v %v, want map[z:3]", info, err)
	}
	info, err = sn.Update(s.ctx, snapshots.Info{Name: "e-base", Labels: map[string]string{"x": "1"}})
	if err != nil || fmt.Sprint(info.Labels) != "map[x:1]" {
		return fmt.Errorf("Update with no paths: %+v %v, want map[x:1]", info, err)
	}
	if _, err := sn.Update(s.ctx, snapshots.Info{Name: "e-base", Parent: "x"}, "parent"); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("Update of the parent: %v, want invalid argument", err)
	}
	if _, err := sn.Update(s.ctx, snapshots.Info{Name: "no-such"}, "labels.x"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("Update of an unknown snapshot: %v, want not found", err)
	}
	return nil
}

func checkSnapshotWalk(s *state) error {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	evs, errs := s.client.Subscribe(ctx, `topic~="^/snapshot/",namespace=="go-audit-walk"`)
	time.Sleep(200 * time.Millisecond)
	sn := s.client.SnapshotService(*snapshotter)
	wctx := namespaces.WithNamespace(context.Background(), "go-audit-walk")
	// Created out of key order: containerd walks in key order.
	if _, err := sn.Prepare(wctx, "w-c", ""); err != nil {
		return err
	}
	if err := sn.Commit(wctx, "w-b", "w-c", snapshots.WithLabels(map[string]string{"role": "base"})); err != nil {
		return err
	}
	if _, err := sn.View(wctx, "w-z", "w-b"); err != nil {
		return err
	}
	mounts, err := sn.Prepare(wctx, "w-a", "w-b")
	if err != nil {
		return err
	}
	walk := func(filters ...string) (string, error) {
		var names []string
		err := sn.Walk(wctx, func(_ context.Context, i snapshots.Info) error {
			names = append(names, i.Name)
			return nil
		}, filters...)
		return strings.Join(names, ","), err
	}
	for _, c := range []struct {
		filters []string
		want    string
	}{
		{nil, "w-a,w-b,w-z"},
		{[]string{"kind==committed"}, "w-b"},
		{[]string{"kind==active", "kind==view"}, "w-a,w-z"},
		{[]string{"parent==w-b"}, "w-a,w-z"},
		{[]string{`name~="^w-[az]$"`}, "w-a,w-z"},
		{[]string{"labels.role==base"}, "w-b"},
		{[]string{"parent"}, "w-a,w-b,w-z"},
	} {
		got, err := walk(c.filters...)
		if err != nil || got != c.want {
			return fmt.Errorf("Walk %v: %q %v, want %q", c.filters, got, err, c.want)
		}
	}
	// The raw List stream, in key order too.
	lc, err := snapshotsapi.NewSnapshotsClient(s.client.Conn()).List(wctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: *snapshotter})
	if err != nil {
		return err
	}
	var listed []string
	for {
		r, err := lc.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		for _, i := range r.Info {
			listed = append(listed, i.Name)
		}
	}
	if strings.Join(listed, ",") != "w-a,w-b,w-z" {
		return fmt.Errorf("List %v, want key order", listed)
	}

	// Usage of an active snapshot counts what was written into it.
	if len(mounts) != 1 || mounts[0].Type != "bind" {
		return fmt.Errorf("native mounts %+v", mounts)
	}
	if err := os.WriteFile(filepath.Join(mounts[0].Source, "file"), make([]byte, 64*1024), 0o644); err != nil {
		return err
	}
	u, err := sn.Usage(wctx, "w-a")
	if err != nil || u.Size < 64*1024 || u.Inodes < 2 {
		return fmt.Errorf("Usage of the active snapshot: %+v %v, want at least 64 KiB in 2 inodes", u, err)
	}

	// The events: the prepares, the commit (no event for the view), then the removes.
	if err := sn.Remove(wctx, "w-a"); err != nil {
		return err
	}
	var got []string
	deadline := time.After(5 * time.Second)
	for len(got) < 4 {
		select {
		case env := <-evs:
			v, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				return err
			}
			switch e := v.(type) {
			case *eventtypes.SnapshotPrepare:
				got = append(got, env.Topic+" "+e.Key)
			case *eventtypes.SnapshotCommit:
				got = append(got, env.Topic+" "+e.Key+">"+e.Name)
			case *eventtypes.SnapshotRemove:
				got = append(got, env.Topic+" "+e.Key)
			}
		case err := <-errs:
			return fmt.Errorf("subscription: %v", err)
		case <-deadline:
			return fmt.Errorf("events %v, want 4", got)
		}
	}
	if strings.Join(got, ";") != "/snapshot/prepare w-c;/snapshot/commit w-c>w-b;/snapshot/prepare w-a;/snapshot/remove w-a" {
		return fmt.Errorf("events %v", got)
	}
	return nil
}

func checkFilterFields(s *state) error {
	dgst, err := writeBlob(s, "audit-filter", []byte("0123456789"))
	if err != nil {
		return err
	}
	count := func(filters ...string) (int, error) {
		n := 0
		err := s.client.ContentStore().Walk(s.ctx, func(i content.Info) error {
			if i.Digest == dgst {
				n++
			}
			return nil
		}, filters...)
		return n, err
	}
	if n, err := count("digest==" + dgst.String()); err != nil || n != 1 {
		return fmt.Errorf("content filter on the digest: %d %v, want 1", n, err)
	}
	// containerd's content adaptor has no size (a TODO): the filter matches nothing.
	if n, err := count("size==10"); err != nil || n != 0 {
		return fmt.Errorf("content filter on the size: %d %v, want 0", n, err)
	}
	spec, err := typeurl.MarshalAny(&eventtypes.NamespaceCreate{Name: "not-a-spec"})
	if err != nil {
		return err
	}
	cs := s.client.ContainerService()
	if _, err := cs.Create(s.ctx, containers.Container{ID: "audit-ctr", Runtime: containers.RuntimeInfo{Name: "io.containerd.runc.v2"}, Spec: spec, Snapshotter: "native", SnapshotKey: "audit-key"}); err != nil {
		return err
	}
	for _, c := range []struct {
		filter string
		want   int
	}{{"id==audit-ctr", 1}, {"runtime.name==io.containerd.runc.v2", 1}, {"snapshotter==native", 0}, {"snapshotkey==audit-key", 0}} {
		got, err := cs.List(s.ctx, c.filter)
		if err != nil || len(got) != c.want {
			return fmt.Errorf("containers filter %s: %d %v, want %d", c.filter, len(got), err, c.want)
		}
	}
	// Extensions as containerd's bolt store keeps them: an absent key under extensions.<k> is an empty Any, and
	// "extensions" only ever adds to what is stored (the answer shows the request's set).
	e1 := ptypes.Any{TypeUrl: "x.E1", Value: []byte("1")}
	e2 := ptypes.Any{TypeUrl: "x.E2", Value: []byte("2")}
	if _, err := cs.Update(s.ctx, containers.Container{ID: "audit-ctr", Extensions: map[string]ptypes.Any{"e1": e1}}, "extensions.e1", "extensions.gone"); err != nil {
		return err
	}
	got, err := cs.Get(s.ctx, "audit-ctr")
	if g, ok := got.Extensions["gone"]; err != nil || !ok || g.TypeUrl != "" || len(got.Extensions) != 2 {
		return fmt.Errorf("extensions after extensions.e1, extensions.gone: %v %v, want e1 and an empty gone", got.Extensions, err)
	}
	upd, err := cs.Update(s.ctx, containers.Container{ID: "audit-ctr", Extensions: map[string]ptypes.Any{"e2": e2}}, "extensions")
	if err != nil || len(upd.Extensions) != 1 {
		return fmt.Errorf("Update extensions answered %v %v, want the request's one", upd.Extensions, err)
	}
	got, err = cs.Get(s.ctx, "audit-ctr")
	if err != nil || len(got.Extensions) != 3 || got.Extensions["e1"].TypeUrl != "x.E1" || got.Extensions["e2"].TypeUrl != "x.E2" {
		return fmt.Errorf("stored extensions %v %v, want e1, gone and e2", got.Extensions, err)
	}
	return cs.Delete(s.ctx, "audit-ctr")
}

func checkImplicitNamespaces(s *state) error {
	listed := func(name string) (bool, error) {
		all, err := s.client.NamespaceService().List(s.ctx)
		if err != nil {
			return false, err
		}
		for _, n := range all {
			if n == name {
				return true, nil
			}
		}
		return false, nil
	}
	sn := s.client.SnapshotService(*snapshotter)
	for _, c := range []struct {
		ns   string
		call func(ctx context.Context) error
		made bool
	}{
		{"go-audit-i1", func(ctx context.Context) error {
			_, err := sn.Prepare(ctx, "k", "no-such-parent")
			if !errdefs.IsNotFound(err) {
				return fmt.Errorf("Prepare on an unknown parent: %v", err)
			}
			_, err = sn.Stat(ctx, "k")
			if !errdefs.IsNotFound(err) {
				return fmt.Errorf("Stat: %v", err)
			}
			_, err = s.client.ImageService().Update(ctx, images.Image{Name: "no/such:image", Target: ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromString("x"), Size: 1}})
			if !errdefs.IsNotFound(err) {
				return fmt.Errorf("image Update of an unknown image: %v", err)
			}
			_, err = s.client.LeasesService().List(ctx)
			return err
		}, false},
		{"go-audit-i2", func(ctx context.Context) error {
			w, err := s.client.ContentStore().Writer(ctx, content.WithRef("implicit"))
			if err != nil {
				return err
			}
			return w.Close()
		}, true},
		{"go-audit-i3", func(ctx context.Context) error {
			_, err := s.client.LeasesService().Create(ctx, leases.WithID("implicit"))
			return err
		}, true},
		{"go-audit-i4", func(ctx context.Context) error {
			_, err := sn.Prepare(ctx, "implicit", "")
			return err
		}, true},
	} {
		ctx := namespaces.WithNamespace(context.Background(), c.ns)
		if err := c.call(ctx); err != nil {
			return fmt.Errorf("%s: %v", c.ns, err)
		}
		got, err := listed(c.ns)
		if err != nil {
			return err
		}
		if got != c.made {
			return fmt.Errorf("namespace %s listed: %v, want %v", c.ns, got, c.made)
		}
	}
	return nil
}

// A STAT fills in total and times, which stay in the WRITE and COMMIT answers; after the COMMIT, the server sends
// the COMMIT answer once more and ends.
func checkWriteSession(s *state) error {
	wc, err := contentapi.NewContentClient(s.client.Conn()).Write(s.ctx)
	if err != nil {
		return err
	}
	data := []byte("session data")
	if err := wc.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteActionStat, Ref: "audit-session", Total: int64(len(data))}); err != nil {
		return err
	}
	st, err := wc.Recv()
	if err != nil || st.Total != int64(len(data)) || st.StartedAt.IsZero() {
		return fmt.Errorf("STAT: %+v %v", st, err)
	}
	if err := wc.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteActionWrite, Ref: "audit-session", Data: data}); err != nil {
		return err
	}
	w, err := wc.Recv()
	if err != nil || w.Offset != int64(len(data)) || w.Total != int64(len(data)) || !w.StartedAt.Equal(st.StartedAt) {
		return fmt.Errorf("WRITE after STAT: %+v %v, want the STAT's total and times kept", w, err)
	}
	if err := wc.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteActionCommit, Ref: "audit-session", Total: int64(len(data)), Offset: int64(len(data))}); err != nil {
		return err
	}
	c, err := wc.Recv()
	if err != nil || c.Action != contentapi.WriteActionCommit || c.Digest != digest.FromBytes(data) {
		return fmt.Errorf("COMMIT: %+v %v", c, err)
	}
	again, err := wc.Recv()
	if err != nil || again.Action != contentapi.WriteActionCommit || again.Digest != c.Digest || again.Offset != c.Offset {
		return fmt.Errorf("after COMMIT: %+v %v, want the COMMIT answer again", again, err)
	}
	if _, err := wc.Recv(); err != io.EOF {
		return fmt.Errorf("after the repeated answer: %v, want EOF", err)
	}
	// (Unleased: a collector may have taken it already.)
	if err := s.client.ContentStore().Delete(s.ctx, digest.FromBytes(data)); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

func checkBadFilters(s *state) error {
	bad := `labels."x"==`
	err := s.client.SnapshotService(*snapshotter).Walk(s.ctx, func(context.Context, snapshots.Info) error { return nil }, bad)
	if !errors.Is(err, errdefs.ErrUnknown) || !strings.Contains(err.Error(), "invalid argument") {
		return fmt.Errorf("snapshot Walk: %v, want unknown (containerd passes the error on unconverted)", err)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	_, errs := s.client.Subscribe(ctx, bad)
	select {
	case err := <-errs:
		// (The client library passes this status on as it came.)
		if status.Code(err) != codes.Unknown || !strings.Contains(err.Error(), "failed parsing subscription filters") {
			return fmt.Errorf("Subscribe: %v, want unknown", err)
		}
	case <-time.After(5 * time.Second):
		return errors.New("Subscribe with a malformed filter did not fail")
	}
	if _, err := s.client.LeasesService().List(s.ctx, bad); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("lease List: %v, want invalid argument", err)
	}
	if _, err := s.client.ImageService().List(s.ctx, bad); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("image List: %v, want invalid argument", err)
	}
	return nil
}

func checkEmptyLabels(s *state) error {
	dgst, err := writeBlob(s, "audit-empty-labels", []byte("labels"))
	if err != nil {
		return err
	}
	cs := s.client.ContentStore()
	for _, paths := range [][]string{nil, {"labels"}} {
		info, err := cs.Update(s.ctx, content.Info{Digest: dgst, Labels: map[string]string{"a": "1", "b": ""}}, paths...)
		if err != nil || fmt.Sprint(info.Labels) != "map[a:1]" {
			return fmt.Errorf("content Update %v: %v %v, want map[a:1]", paths, info.Labels, err)
		}
		if info, err = cs.Info(s.ctx, dgst); err != nil || fmt.Sprint(info.Labels) != "map[a:1]" {
			return fmt.Errorf("content Info after Update %v: %v %v, want map[a:1]", paths, info.Labels, err)
		}
	}
	sn := s.client.SnapshotService(*snapshotter)
	if _, err := sn.Prepare(s.ctx, "audit-empty-labels", "", snapshots.WithLabels(map[string]string{"a": "1", "b": ""})); err != nil {
		return err
	}
	if info, err := sn.Stat(s.ctx, "audit-empty-labels"); err != nil || fmt.Sprint(info.Labels) != "map[a:1]" {
		return fmt.Errorf("snapshot labels %v %v, want map[a:1]", info.Labels, err)
	}
	if info, err := sn.Update(s.ctx, snapshots.Info{Name: "audit-empty-labels", Labels: map[string]string{"c": "3", "d": ""}}, "labels"); err != nil || fmt.Sprint(info.Labels) != "map[c:3]" {
		return fmt.Errorf("snapshot Update labels %v %v, want map[c:3]", info.Labels, err)
	}
	l, err := s.client.LeasesService().Create(s.ctx, leases.WithID("audit-empty-labels"), leases.WithLabels(map[string]string{"a": "1", "b": ""}))
	if err != nil || fmt.Sprint(l.Labels) != "map[a:1]" {
		return fmt.Errorf("lease Create answered %v %v, want map[a:1]", l.Labels, err)
	}
	all, err := s.client.LeasesService().List(s.ctx, "id==audit-empty-labels")
	if err != nil || len(all) != 1 || fmt.Sprint(all[0].Labels) != "map[a:1]" {
		return fmt.Errorf("lease List %v %v, want map[a:1]", all, err)
	}
	return nil
}
