package main

// The second part of the audit: tasks, diff, version and grpc.health.v1, compared call by call with containerd
// 1.6.20's services/tasks/local.go, its runc v2 shim (runtime/v2/runc/task) and runtime/v2, services/diff with
// the walking differ, services/version and grpc-go's health server. Each check records what it saw as
// "call: answer" lines and compares them with the answers containerd gives; a mismatch lists every line.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/typeurl"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// answer is how a call's result reads in a check: "OK" or the gRPC code's name.
func answer(err error) string {
	if err == nil {
		return "OK"
	}
	if os.Getenv("AUDIT_SHOW") != "" {
		return status.Code(err).String() + " [" + status.Convert(err).Message() + "]"
	}
	return status.Code(err).String()
}

// shown matches the messages answer() adds under AUDIT_SHOW (for reading, not compared).
var shown = regexp.MustCompile(` \[[^\]]*\]`)

// seen collects "call: answer" lines and compares them with what containerd answers.
type seen struct {
	got, want []string
}

func (s *seen) add(call string, got, want string) {
	if os.Getenv("AUDIT_SHOW") != "" {
		fmt.Fprintf(os.Stderr, "SEEN %s: %s\n", call, got)
	}
	s.got = append(s.got, call+": "+got)
	s.want = append(s.want, call+": "+want)
}

func (s *seen) err() error {
	var bad []string
	for i := range s.got {
		if shown.ReplaceAllString(s.got[i], "") != s.want[i] {
			bad = append(bad, fmt.Sprintf("%s (containerd: %s)", s.got[i], strings.SplitN(s.want[i], ": ", 2)[1]))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return nil
}

// busyboxRoot makes a root file system of the host's static busybox (sh, sleep, true) in a temp directory.
func busyboxRoot() (string, func(), error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", nil, fmt.Errorf("a static busybox is needed for the task checks: %w", err)
	}
	dir, err := os.MkdirTemp("", "audit-rootfs-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			cleanup()
			return "", nil, err
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		cleanup()
		return "", nil, err
	}
	for _, n := range []string{"sh", "sleep", "true"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", n)); err != nil {
			cleanup()
			return "", nil, err
		}
	}
	return dir, cleanup, nil
}

// newTaskContainer makes a container record whose spec runs args on the busybox root (no snapshot: the task's
// rootfs is the spec's root path).
func newTaskContainer(s *state, id, root string, args ...string) (*specs.Spec, error) {
	return newRuntimeContainer(s, id, root, "io.containerd.runc.v2", args...)
}

func newRuntimeContainer(s *state, id, root, runtime string, args ...string) (*specs.Spec, error) {
	cs := s.client.ContainerService()
	_ = cs.Delete(s.ctx, id)
	c := containers.Container{ID: id, Runtime: containers.RuntimeInfo{Name: runtime}}
	spec, err := oci.GenerateSpec(s.ctx, s.client, &c, oci.WithRootFSPath(root), oci.WithProcessArgs(args...))
	if err != nil {
		return nil, err
	}
	any, err := typeurl.MarshalAny(spec)
	if err != nil {
		return nil, err
	}
	c.Spec = any
	if _, err := cs.Create(s.ctx, c); err != nil {
		return nil, err
	}
	return spec, nil
}

func waitStatus(ctx context.Context, api tasksapi.TasksClient, id, execID string) (*tasksapi.WaitResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return api.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id, ExecID: execID})
}

func checkTaskErrors(s *state) error {
	root, cleanup, err := busyboxRoot()
	if err != nil {
		return err
	}
	defer cleanup()
	api := s.client.TaskService()
	var c seen
	const id = "audit-task-errors"
	defer func() {
		_, _ = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9, All: true})
		_, _ = waitStatus(s.ctx, api, id, "")
		_, _ = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		_ = s.client.ContainerService().Delete(s.ctx, id)
	}()
	// No container at all, then a container without a task.
	_, err = api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: "audit-no-container"})
	c.add("Create, no container", answer(err), "NotFound")
	_, err = api.Get(s.ctx, &tasksapi.GetRequest{ContainerID: "audit-no-container"})
	c.add("Get, no container", answer(err), "NotFound")
	spec, err := newTaskContainer(s, id, root, "/bin/sleep", "1000")
	if err != nil {
		return err
	}
	_, err = api.Get(s.ctx, &tasksapi.GetRequest{ContainerID: id})
	c.add("Get, no task", answer(err), "NotFound")
	_, err = api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id})
	c.add("Start, no task", answer(err), "NotFound")
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9})
	c.add("Kill, no task", answer(err), "NotFound")
	_, err = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
	c.add("Delete, no task", answer(err), "NotFound")
	_, err = api.DeleteProcess(s.ctx, &tasksapi.DeleteProcessRequest{ContainerID: id, ExecID: "x"})
	c.add("DeleteProcess, no task", answer(err), "NotFound")
	_, err = api.Wait(s.ctx, &tasksapi.WaitRequest{ContainerID: id})
	c.add("Wait, no task", answer(err), "NotFound")
	_, err = api.ResizePty(s.ctx, &tasksapi.ResizePtyRequest{ContainerID: id, Width: 80, Height: 24})
	c.add("ResizePty, no task", answer(err), "NotFound")
	_, err = api.CloseIO(s.ctx, &tasksapi.CloseIORequest{ContainerID: id, Stdin: true})
	c.add("CloseIO, no task", answer(err), "NotFound")
	_, err = api.ListPids(s.ctx, &tasksapi.ListPidsRequest{ContainerID: id})
	c.add("ListPids, no task", answer(err), "NotFound")
	_, err = api.Pause(s.ctx, &tasksapi.PauseTaskRequest{ContainerID: id})
	c.add("Pause, no task", answer(err), "NotFound")
	_, err = api.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: id, ExecID: "x"})
	c.add("Exec, no task", answer(err), "NotFound")
	_, err = api.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: id})
	c.add("Exec, no task, empty exec id", answer(err), "InvalidArgument")

	if _, err := api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Create: %v", err)
	}
	_, err = api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id})
	c.add("Create, task exists", answer(err), "AlreadyExists")
	g, err := api.Get(s.ctx, &tasksapi.GetRequest{ContainerID: id})
	if err != nil {
		return fmt.Errorf("Get: %v", err)
	}
	c.add("Get, created: status and id", fmt.Sprintf("%v %s", g.Process.Status, g.Process.ID), "CREATED "+id)
	_, err = api.Pause(s.ctx, &tasksapi.PauseTaskRequest{ContainerID: id})
	c.add("Pause, created", answer(err), "Unknown")
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, ExecID: "none", Signal: 9})
	c.add("Kill, unknown exec", answer(err), "NotFound")
	st, err := api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id})
	if err != nil {
		return fmt.Errorf("Start: %v", err)
	}
	_, err = api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id})
	c.add("Start, running", answer(err), "Unknown")
	_, err = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
	c.add("Delete, running", answer(err), "Unknown")
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, ExecID: "none", Signal: 9})
	c.add("Kill, unknown exec", answer(err), "NotFound")
	_, err = api.ResizePty(s.ctx, &tasksapi.ResizePtyRequest{ContainerID: id, ExecID: "none", Width: 80, Height: 24})
	c.add("ResizePty, unknown exec", answer(err), "NotFound")
	_, err = api.CloseIO(s.ctx, &tasksapi.CloseIORequest{ContainerID: id, ExecID: "none", Stdin: true})
	c.add("CloseIO, unknown exec", answer(err), "NotFound")
	_, err = api.Get(s.ctx, &tasksapi.GetRequest{ContainerID: id, ExecID: "none"})
	c.add("Get, unknown exec", answer(err), "NotFound")
	_, err = api.Wait(s.ctx, &tasksapi.WaitRequest{ContainerID: id, ExecID: "none"})
	c.add("Wait, unknown exec", answer(err), "NotFound")
	_, err = api.DeleteProcess(s.ctx, &tasksapi.DeleteProcessRequest{ContainerID: id, ExecID: "none"})
	c.add("DeleteProcess, unknown exec", answer(err), "NotFound")
	_, err = api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id, ExecID: "none"})
	c.add("Start, unknown exec", answer(err), "NotFound")
	_, err = api.ResizePty(s.ctx, &tasksapi.ResizePtyRequest{ContainerID: id, Width: 80, Height: 24})
	c.add("ResizePty, init without a terminal", answer(err), "OK")
	_, err = api.CloseIO(s.ctx, &tasksapi.CloseIORequest{ContainerID: id, Stdin: true})
	c.add("CloseIO, init", answer(err), "OK")
	pids, err := api.ListPids(s.ctx, &tasksapi.ListPidsRequest{ContainerID: id})
	c.add("ListPids, running", fmt.Sprintf("%s %d", answer(err), len(procsOf(pids))), "OK 1")
	if len(procsOf(pids)) == 1 {
		c.add("ListPids, the init pid", fmt.Sprint(pids.Processes[0].Pid == st.Pid, pids.Processes[0].Info == nil), "true true")
	}
	list, err := api.List(s.ctx, &tasksapi.ListTasksRequest{})
	n := 0
	for _, t := range tasksOf(list) {
		if t.ID == id {
			n++
			c.add("List, the task", fmt.Sprintf("%v %v", t.Status, t.Pid == st.Pid), "RUNNING true")
		}
	}
	c.add("List, entries of the task", fmt.Sprintf("%s %d", answer(err), n), "OK 1")

	// Exec: ids, a taken id, start twice.
	pspec := *spec.Process
	pspec.Args = []string{"/bin/sleep", "1000"}
	pany, err := typeurl.MarshalAny(&pspec)
	if err != nil {
		return err
	}
	_, err = api.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: id, ExecID: "", Spec: pany})
	c.add("Exec, empty exec id", answer(err), "InvalidArgument")
	_, err = api.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: id, ExecID: "e1", Spec: pany})
	c.add("Exec", answer(err), "OK")
	_, err = api.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: id, ExecID: "e1", Spec: pany})
	c.add("Exec, exec id taken", answer(err), "AlreadyExists")
	g, err = api.Get(s.ctx, &tasksapi.GetRequest{ContainerID: id, ExecID: "e1"})
	c.add("Get, created exec", fmt.Sprintf("%s %v %s %d", answer(err), procOf(g).Status, procOf(g).ID, procOf(g).Pid), "OK CREATED e1 0")
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, ExecID: "e1", Signal: 9})
	c.add("Kill, created exec", answer(err), "FailedPrecondition")
	_, err = api.DeleteProcess(s.ctx, &tasksapi.DeleteProcessRequest{ContainerID: id, ExecID: "e1"})
	c.add("DeleteProcess, created exec", answer(err), "OK")
	_, err = api.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: id, ExecID: "e1", Spec: pany})
	c.add("Exec, id of a deleted exec", answer(err), "OK")
	est, err := api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id, ExecID: "e1"})
	c.add("Start, exec", answer(err), "OK")
	_, err = api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id, ExecID: "e1"})
	c.add("Start, running exec", answer(err), "Unknown")
	_, err = api.DeleteProcess(s.ctx, &tasksapi.DeleteProcessRequest{ContainerID: id, ExecID: "e1"})
	c.add("DeleteProcess, running exec", answer(err), "Unknown")
	pids, _ = api.ListPids(s.ctx, &tasksapi.ListPidsRequest{ContainerID: id})
	execInfo := "none"
	for _, p := range procsOf(pids) {
		if est != nil && p.Pid == est.Pid && p.Info != nil {
			execInfo = p.Info.TypeUrl
		}
	}
	c.add("ListPids, the exec's info", fmt.Sprintf("%d %s", len(procsOf(pids)), execInfo), "2 containerd.runc.v1.ProcessDetails")
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, ExecID: "e1", Signal: 9})
	c.add("Kill, exec", answer(err), "OK")
	w, err := waitStatus(s.ctx, api, id, "e1")
	c.add("Wait, exec", fmt.Sprintf("%s %d", answer(err), waitOf(w).ExitStatus), "OK 137")
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, ExecID: "e1", Signal: 9})
	c.add("Kill, exited exec", answer(err), "NotFound")
	_, err = api.ResizePty(s.ctx, &tasksapi.ResizePtyRequest{ContainerID: id, ExecID: "e1", Width: 80, Height: 24})
	c.add("ResizePty, exited exec", answer(err), "Unknown")
	_, err = api.CloseIO(s.ctx, &tasksapi.CloseIORequest{ContainerID: id, ExecID: "e1", Stdin: true})
	c.add("CloseIO, exited exec", answer(err), "OK")
	d, err := api.DeleteProcess(s.ctx, &tasksapi.DeleteProcessRequest{ContainerID: id, ExecID: "e1"})
	c.add("DeleteProcess, exited exec", fmt.Sprintf("%s %s %d %v", answer(err), delOf(d).ID, delOf(d).ExitStatus, delOf(d).Pid == startOf(est).Pid), "OK e1 137 true")
	_, err = api.Get(s.ctx, &tasksapi.GetRequest{ContainerID: id, ExecID: "e1"})
	c.add("Get, deleted exec", answer(err), "NotFound")

	// The init: killed, waited for, deleted.
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9})
	c.add("Kill, init", answer(err), "OK")
	w, err = waitStatus(s.ctx, api, id, "")
	c.add("Wait, init", fmt.Sprintf("%s %d", answer(err), waitOf(w).ExitStatus), "OK 137")
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9})
	c.add("Kill, exited init", answer(err), "NotFound")
	_, err = api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id})
	c.add("Start, exited init", answer(err), "Unknown")
	_, err = api.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: id, ExecID: "e2", Spec: pany})
	c.add("Exec, exited init", answer(err), "Unknown")
	_, err = api.Pause(s.ctx, &tasksapi.PauseTaskRequest{ContainerID: id})
	c.add("Pause, exited init", answer(err), "Unknown")
	pids, err = api.ListPids(s.ctx, &tasksapi.ListPidsRequest{ContainerID: id})
	c.add("ListPids, exited init", fmt.Sprintf("%s %d", answer(err), len(procsOf(pids))), "OK 0")
	g, err = api.Get(s.ctx, &tasksapi.GetRequest{ContainerID: id})
	c.add("Get, exited init", fmt.Sprintf("%s %v %d %v", answer(err), procOf(g).Status, procOf(g).ExitStatus, procOf(g).Pid == st.Pid), "OK STOPPED 137 true")
	dr, err := api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
	c.add("Delete, exited", fmt.Sprintf("%s %q %d %v", answer(err), delOf(dr).ID, delOf(dr).ExitStatus, delOf(dr).Pid == st.Pid), `OK "" 137 true`)
	_, err = api.Wait(s.ctx, &tasksapi.WaitRequest{ContainerID: id})
	c.add("Wait, deleted", answer(err), "NotFound")
	_, err = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
	c.add("Delete, deleted", answer(err), "NotFound")

	// A task deleted without ever starting.
	if _, err := api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Create again: %v", err)
	}
	dr, err = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
	c.add("Delete, created", fmt.Sprintf("%s %d %v", answer(err), delOf(dr).ExitStatus, delOf(dr).ExitedAt.IsZero()), "OK 0 true")
	return c.err()
}

// taskEvents collects the /tasks/ events of one container, in order.
func taskEvents(evs <-chan *events.Envelope, id string, until string, timeout time.Duration) ([]string, map[string]interface{}, error) {
	var topics []string
	last := map[string]interface{}{}
	deadline := time.After(timeout)
	for {
		select {
		case env := <-evs:
			v, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				return topics, last, err
			}
			cid := ""
			switch e := v.(type) {
			case *eventtypes.TaskCreate:
				cid = e.ContainerID
			case *eventtypes.TaskStart:
				cid = e.ContainerID
			case *eventtypes.TaskExit:
				cid = e.ContainerID
			case *eventtypes.TaskDelete:
				cid = e.ContainerID
			case *eventtypes.TaskExecAdded:
				cid = e.ContainerID
			case *eventtypes.TaskExecStarted:
				cid = e.ContainerID
			case *eventtypes.TaskPaused:
				cid = e.ContainerID
			case *eventtypes.TaskResumed:
				cid = e.ContainerID
			}
			if cid != id {
				continue
			}
			topics = append(topics, env.Topic)
			key := env.Topic
			if x, ok := v.(*eventtypes.TaskExit); ok && x.ID != id {
				key = "/tasks/exit(exec)"
			}
			last[key] = v
			if env.Topic == until {
				return topics, last, nil
			}
		case <-deadline:
			return topics, last, fmt.Errorf("no %s event within %s (saw %v)", until, timeout, topics)
		}
	}
}

func checkTaskEvents(s *state) error {
	root, cleanup, err := busyboxRoot()
	if err != nil {
		return err
	}
	defer cleanup()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	evs, _ := s.client.Subscribe(ctx, `topic~="^/tasks/"`)
	time.Sleep(200 * time.Millisecond)
	api := s.client.TaskService()
	const id = "audit-task-events"
	defer func() {
		_, _ = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9, All: true})
		_, _ = waitStatus(s.ctx, api, id, "")
		_, _ = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		_ = s.client.ContainerService().Delete(s.ctx, id)
	}()
	spec, err := newTaskContainer(s, id, root, "/bin/sleep", "1000")
	if err != nil {
		return err
	}
	var c seen
	if _, err := api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Create: %v", err)
	}
	st, err := api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id})
	if err != nil {
		return fmt.Errorf("Start: %v", err)
	}
	pspec := *spec.Process
	pspec.Args = []string{"/bin/sh", "-c", "exit 3"}
	pany, _ := typeurl.MarshalAny(&pspec)
	if _, err := api.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: id, ExecID: "ev-exec", Spec: pany}); err != nil {
		return fmt.Errorf("Exec: %v", err)
	}
	est, err := api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id, ExecID: "ev-exec"})
	if err != nil {
		return fmt.Errorf("Start exec: %v", err)
	}
	if _, err := waitStatus(s.ctx, api, id, "ev-exec"); err != nil {
		return fmt.Errorf("Wait exec: %v", err)
	}
	if _, err := api.DeleteProcess(s.ctx, &tasksapi.DeleteProcessRequest{ContainerID: id, ExecID: "ev-exec"}); err != nil {
		return fmt.Errorf("DeleteProcess: %v", err)
	}
	if _, err := api.Pause(s.ctx, &tasksapi.PauseTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Pause: %v", err)
	}
	if _, err := api.Resume(s.ctx, &tasksapi.ResumeTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Resume: %v", err)
	}
	if _, err := api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9}); err != nil {
		return fmt.Errorf("Kill: %v", err)
	}
	if _, err := waitStatus(s.ctx, api, id, ""); err != nil {
		return fmt.Errorf("Wait: %v", err)
	}
	if _, err := api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Delete: %v", err)
	}
	topics, last, err := taskEvents(evs, id, "/tasks/delete", 10*time.Second)
	if err != nil {
		return err
	}
	c.add("topics", strings.Join(topics, " "), "/tasks/create /tasks/start /tasks/exec-added /tasks/exec-started /tasks/exit /tasks/paused /tasks/resumed /tasks/exit /tasks/delete")
	if e, ok := last["/tasks/create"].(*eventtypes.TaskCreate); ok {
		c.add("create", fmt.Sprintf("bundle:%v rootfs:%d io:%+v checkpoint:%q", e.Bundle != "", len(e.Rootfs), *e.IO, e.Checkpoint),
			`bundle:true rootfs:0 io:{Stdin: Stdout: Stderr: Terminal:false XXX_NoUnkeyedLiteral:{} XXX_unrecognized:[] XXX_sizecache:0} checkpoint:""`)
	}
	if e, ok := last["/tasks/start"].(*eventtypes.TaskStart); ok {
		c.add("start pid", fmt.Sprint(e.Pid == st.Pid), "true")
	}
	if e, ok := last["/tasks/exec-added"].(*eventtypes.TaskExecAdded); ok {
		c.add("exec-added", e.ExecID, "ev-exec")
	}
	if e, ok := last["/tasks/exec-started"].(*eventtypes.TaskExecStarted); ok {
		c.add("exec-started", fmt.Sprint(e.ExecID, " ", e.Pid == est.Pid), "ev-exec true")
	}
	if e, ok := last["/tasks/exit(exec)"].(*eventtypes.TaskExit); ok {
		c.add("exec exit", fmt.Sprint(e.ID, " ", e.Pid == est.Pid, " ", e.ExitStatus, " ", !e.ExitedAt.IsZero()), "ev-exec true 3 true")
	}
	if e, ok := last["/tasks/exit"].(*eventtypes.TaskExit); ok {
		c.add("init exit", fmt.Sprint(e.ID, " ", e.Pid == st.Pid, " ", e.ExitStatus, " ", !e.ExitedAt.IsZero()), id+" true 137 true")
	}
	if e, ok := last["/tasks/delete"].(*eventtypes.TaskDelete); ok {
		c.add("delete", fmt.Sprintf("%q %v %d %v", e.ID, e.Pid == st.Pid, e.ExitStatus, !e.ExitedAt.IsZero()), `"" true 137 true`)
	}
	return c.err()
}

func checkHealthVersion(s *state) error {
	var c seen
	h := healthpb.NewHealthClient(s.client.Conn())
	r, err := h.Check(s.ctx, &healthpb.HealthCheckRequest{})
	c.add(`Check ""`, fmt.Sprint(answer(err), " ", healthOf(r).Status), "OK SERVING")
	_, err = h.Check(s.ctx, &healthpb.HealthCheckRequest{Service: "containerd.services.tasks.v1.Tasks"})
	c.add("Check, a service name", answer(err), "NotFound")
	if err != nil {
		c.add("Check, its message", status.Convert(err).Message(), "unknown service")
	}
	for _, svc := range []string{"", "no-such-service"} {
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		w, err := h.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err == nil {
			var first *healthpb.HealthCheckResponse
			first, err = w.Recv()
			c.add(fmt.Sprintf("Watch %q", svc), fmt.Sprint(answer(err), " ", healthOf(first).Status), map[string]string{"": "OK SERVING", "no-such-service": "OK SERVICE_UNKNOWN"}[svc])
		} else {
			c.add(fmt.Sprintf("Watch %q", svc), answer(err), "OK")
		}
		cancel()
	}
	v, err := s.client.Version(s.ctx)
	c.add("Version", fmt.Sprint(answer(err), " ", v.Version != "", v.Revision != ""), "OK true true")
	return c.err()
}

func checkDiff(s *state) error {
	var c seen
	// Under a lease, as clients diff: the blobs written are not collected before they are applied.
	ctx, done, err := s.client.WithLease(s.ctx)
	if err != nil {
		return err
	}
	defer done(ctx)
	api := diffapi.NewDiffClient(s.client.Conn())
	lower, err := os.MkdirTemp("", "audit-diff-lower-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(lower)
	upper, err := os.MkdirTemp("", "audit-diff-upper-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(upper)
	if err := os.WriteFile(filepath.Join(upper, "f"), []byte("audit diff\n"), 0o644); err != nil {
		return err
	}
	bind := func(dir string) []*types.Mount {
		return []*types.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "ro"}}}
	}
	for _, mt := range []string{"application/vnd.oci.image.layer.v1.tar+zstd", "application/x-unknown"} {
		_, err = api.Diff(ctx, &diffapi.DiffRequest{Left: bind(lower), Right: bind(upper), MediaType: mt})
		c.add("Diff, media type "+mt, answer(err), "Unimplemented")
	}
	_, err = api.Diff(ctx, &diffapi.DiffRequest{Left: bind(lower), Right: bind("/nonexistent-audit-dir")})
	c.add("Diff, a mount that cannot be made", answer(err), "Unknown")
	r, err := api.Diff(ctx, &diffapi.DiffRequest{Left: bind(lower), Right: bind(upper), Labels: map[string]string{"audit": "x"}})
	if err != nil {
		return fmt.Errorf("Diff: %v", err)
	}
	c.add("Diff, answer", fmt.Sprintf("%s %v", r.Diff.MediaType, len(r.Diff.Annotations)), "application/vnd.oci.image.layer.v1.tar+gzip 0")
	info, err := s.client.ContentStore().Info(ctx, r.Diff.Digest)
	c.add("Diff, the blob's labels", fmt.Sprintf("%s %s %v", answer(err), info.Labels["audit"], strings.HasPrefix(info.Labels["containerd.io/uncompressed"], "sha256:")), "OK x true")
	uncompressed := info.Labels["containerd.io/uncompressed"]
	r2, err := api.Diff(ctx, &diffapi.DiffRequest{Left: bind(lower), Right: bind(upper), MediaType: "application/vnd.oci.image.layer.v1.tar"})
	if err == nil {
		info2, err := s.client.ContentStore().Info(ctx, r2.Diff.Digest)
		c.add("Diff, tar: the blob's labels", fmt.Sprintf("%s %d %v", answer(err), len(info2.Labels), r2.Diff.Digest.String() == uncompressed), "OK 0 true")
	} else {
		c.add("Diff, tar", answer(err), "OK")
	}
	// Apply.
	target, err := os.MkdirTemp("", "audit-diff-target-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(target)
	rw := []*types.Mount{{Type: "bind", Source: target, Options: []string{"rbind", "rw"}}}
	desc := *r.Diff
	desc.MediaType = "application/x-unknown"
	_, err = api.Apply(ctx, &diffapi.ApplyRequest{Diff: &desc, Mounts: rw})
	c.add("Apply, unknown media type", answer(err), "Unknown")
	desc.MediaType = "application/vnd.oci.image.layer.v1.tar+gzip"
	desc.Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	_, err = api.Apply(ctx, &diffapi.ApplyRequest{Diff: &desc, Mounts: rw})
	c.add("Apply, unknown blob", answer(err), "NotFound")
	a, err := api.Apply(ctx, &diffapi.ApplyRequest{Diff: r.Diff, Mounts: rw})
	got := ""
	if err == nil {
		b, _ := os.ReadFile(filepath.Join(target, "f"))
		got = fmt.Sprintf("%s %v %v %q", a.Applied.MediaType, a.Applied.Digest.String() == uncompressed, a.Applied.Size_ > 0, string(b))
	}
	c.add("Apply", fmt.Sprint(answer(err), " ", got), `OK application/vnd.oci.image.layer.v1.tar true true "audit diff\n"`)
	return c.err()
}

// Answers of failed calls are nil; these read them as empty.
func procsOf(r *tasksapi.ListPidsResponse) []*task.ProcessInfo {
	if r == nil {
		return nil
	}
	return r.Processes
}

func tasksOf(r *tasksapi.ListTasksResponse) []*task.Process {
	if r == nil {
		return nil
	}
	return r.Tasks
}

func procOf(r *tasksapi.GetResponse) *task.Process {
	if r == nil || r.Process == nil {
		return &task.Process{}
	}
	return r.Process
}

func waitOf(r *tasksapi.WaitResponse) *tasksapi.WaitResponse {
	if r == nil {
		return &tasksapi.WaitResponse{}
	}
	return r
}

func delOf(r *tasksapi.DeleteResponse) *tasksapi.DeleteResponse {
	if r == nil {
		return &tasksapi.DeleteResponse{}
	}
	return r
}

func startOf(r *tasksapi.StartResponse) *tasksapi.StartResponse {
	if r == nil {
		return &tasksapi.StartResponse{}
	}
	return r
}

func healthOf(r *healthpb.HealthCheckResponse) *healthpb.HealthCheckResponse {
	if r == nil {
		return &healthpb.HealthCheckResponse{}
	}
	return r
}

func checkTaskMetricsWaits(s *state) error {
	root, cleanup, err := busyboxRoot()
	if err != nil {
		return err
	}
	defer cleanup()
	api := s.client.TaskService()
	var c seen
	const id = "audit-task-misc"
	defer func() {
		_, _ = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9, All: true})
		_, _ = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		_ = s.client.ContainerService().Delete(s.ctx, id)
	}()
	if _, err := newTaskContainer(s, id, root, "/bin/sleep", "1000"); err != nil {
		return err
	}
	_, err = api.Metrics(s.ctx, &tasksapi.MetricsRequest{Filters: []string{"id=="}})
	c.add("Metrics, a malformed filter", answer(err), "Unknown")
	if _, err := api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Create: %v", err)
	}
	// A wait on a task that is deleted before it ever starts.
	waited := make(chan string, 1)
	go func() {
		w, err := waitStatus(s.ctx, api, id, "")
		waited <- fmt.Sprintf("%s %d %v", answer(err), waitOf(w).ExitStatus, waitOf(w).ExitedAt.IsZero())
	}()
	time.Sleep(300 * time.Millisecond)
	if _, err := api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Delete: %v", err)
	}
	select {
	case got := <-waited:
		// containerd's wait loses its shim ("ttrpc: closed").
		c.add("Wait, a created task then deleted", got, "Unknown 0 true")
	case <-time.After(10 * time.Second):
		c.add("Wait, a created task then deleted", "no answer in 10s", "Unknown 0 true")
	}
	// Kill of a created init: it ends with the signal (SIGKILL: runc's init answers other signals its own way,
	// e.g. SIGTERM with status 2, which Strata, with no runc container before Start, reports as 128+signal).
	if _, err := api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("Create: %v", err)
	}
	_, err = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9})
	c.add("Kill, created", answer(err), "OK")
	w, err := waitStatus(s.ctx, api, id, "")
	c.add("Wait, killed while created", fmt.Sprintf("%s %d", answer(err), waitOf(w).ExitStatus), "OK 137")
	dr, err := api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
	c.add("Delete, killed while created", fmt.Sprintf("%s %d %v", answer(err), delOf(dr).ExitStatus, delOf(dr).ExitedAt.IsZero()), "OK 137 false")
	return c.err()
}

// checkTaskRuntimes: runtimes other than runc's are refused, not run on runc; a missing command fails.
func checkTaskRuntimes(s *state) error {
	root, cleanup, err := busyboxRoot()
	if err != nil {
		return err
	}
	defer cleanup()
	api := s.client.TaskService()
	var c seen
	cs := s.client.ContainerService()
	for _, rt := range []string{"io.containerd.nope.v1", "io.containerd.runc.v1"} {
		id := "audit-rt-" + strings.ReplaceAll(rt, ".", "-")
		if _, err := newRuntimeContainer(s, id, root, rt, "/bin/sleep", "1000"); err != nil {
			return err
		}
		_, err := api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id})
		c.add("Create, runtime "+rt, answer(err), map[string]string{"io.containerd.nope.v1": "Unknown", "io.containerd.runc.v1": "OK"}[rt])
		_, _ = api.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9})
		_, _ = waitStatus(s.ctx, api, id, "")
		_, _ = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		_ = cs.Delete(s.ctx, id)
	}
	// A command that does not exist.
	const id = "audit-task-nocmd"
	if _, err := newTaskContainer(s, id, root, "/bin/no-such-command"); err != nil {
		return err
	}
	defer func() {
		_, _ = api.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		_ = cs.Delete(s.ctx, id)
	}()
	_, err = api.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id})
	if err == nil {
		// Strata makes the runc container at Start: the command is found missing there (containerd: at Create).
		_, err = api.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id})
	}
	c.add("Create or Start, no such command", answer(err), "Unknown")
	return c.err()
}
