/*
 * strata-idmap-mount: attach idmapped clones of directories (Linux >= 5.12 mount API).
 *
 *   strata-idmap-mount [--ro] [--recursive] UIDMAP GIDMAP SOURCE TARGET [SOURCE TARGET]...
 *
 * UIDMAP and GIDMAP are containerd's label format: "containerID:hostID:size" entries, comma-separated.
 * The helper makes one user namespace with those mappings (a child that unshares and waits; its
 * /proc/<pid>/ns/user is opened, then the child exits), and for each pair: open_tree(SOURCE, CLONE) gives a
 * detached copy of the mount, mount_setattr gives it the idmapping (and read-only with --ro), move_mount
 * attaches it at TARGET. --recursive clones the whole tree under SOURCE (rbind).
 *
 * It stops at the first failure (exit 1, the reason on stderr) and never unmounts or removes anything:
 * what it attached before the failure is for the caller to detach, with its own checks (src/mount).
 * Node has no binding for these system calls; this is all the native code Strata has.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int fail(const char *what, const char *arg) {
  fprintf(stderr, "%s %s: %s\n", what, arg ? arg : "", strerror(errno));
  return 1;
}

/* "c:h:s,c:h:s" -> "c h s\nc h s\n" (the /proc/<pid>/uid_map format); 0 if malformed. */
static int to_proc_map(const char *in, char *out, size_t cap) {
  size_t n = 0;
  const char *p = in;
  while (*p) {
    unsigned long c, h, s;
    int used = 0;
    if (sscanf(p, "%lu:%lu:%lu%n", &c, &h, &s, &used) != 3 || s == 0) return 0;
    int w = snprintf(out + n, cap - n, "%lu %lu %lu\n", c, h, s);
    if (w < 0 || (size_t)w >= cap - n) return 0;
    n += (size_t)w;
    p += used;
    if (*p == ',') p++;
    else if (*p) return 0;
  }
  return n > 0;
}

static int write_file(const char *path, const char *data) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t len = (ssize_t)strlen(data);
  ssize_t w = write(fd, data, (size_t)len);
  int saved = errno;
  close(fd);
  errno = saved;
  return w == len ? 0 : -1;
}

/* A user namespace with the mappings, as an fd (containerd's GetUsernsFD does the same with a forked child). */
static int userns_fd(const char *uidmap, const char *gidmap) {
  int ready[2], done[2];
  if (pipe2(ready, O_CLOEXEC) || pipe2(done, O_CLOEXEC)) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    close(ready[0]);
    close(done[1]);
    char c = unshare(CLONE_NEWUSER) == 0 ? 'y' : 'n';
    if (write(ready[1], &c, 1) != 1) _exit(1);
    (void)read(done[0], &c, 1); /* until the parent closes its end */
    _exit(0);
  }
  close(ready[1]);
  close(done[0]);
  char c = 'n';
  int fd = -1;
  char path[64];
  if (read(ready[0], &c, 1) == 1 && c == 'y') {
    snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
    if (write_file(path, uidmap) == 0) {
      snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
      if (write_file(path, gidmap) == 0) {
        snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
      }
    }
  } else {
    errno = EPERM;
  }
  int saved = errno;
  close(done[1]);
  close(ready[0]);
  waitpid(pid, NULL, 0);
  errno = saved;
  return fd;
}

int main(int argc, char **argv) {
  int ro = 0, recursive = 0, i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    if (strcmp(argv[i], "--ro") == 0) ro = 1;
    else if (strcmp(argv[i], "--recursive") == 0) recursive = 1;
    else {
      fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (argc - i < 4 || (argc - i) % 2 != 0) {
    fprintf(stderr, "usage: %s [--ro] [--recursive] UIDMAP GIDMAP SOURCE TARGET [SOURCE TARGET]...\n", argv[0]);
    return 2;
  }
  static char uidmap[4096], gidmap[4096];
  if (!to_proc_map(argv[i], uidmap, sizeof uidmap) || !to_proc_map(argv[i + 1], gidmap, sizeof gidmap)) {
    fprintf(stderr, "invalid mapping: want containerID:hostID:size[,...]\n");
    return 2;
  }
  int ns = userns_fd(uidmap, gidmap);
  if (ns < 0) return fail("user namespace for the mapping", NULL);
  struct mount_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.attr_set = MOUNT_ATTR_IDMAP | (ro ? MOUNT_ATTR_RDONLY : 0);
  attr.userns_fd = (unsigned long long)ns;
  for (i += 2; i + 1 < argc; i += 2) {
    const char *src = argv[i], *dst = argv[i + 1];
    int t = (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (recursive ? AT_RECURSIVE : 0));
    if (t < 0) return fail("open_tree", src);
    if (syscall(SYS_mount_setattr, t, "", AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0), &attr, sizeof attr) != 0)
      return fail("mount_setattr (idmap)", src);
    if (syscall(SYS_move_mount, t, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) != 0) return fail("move_mount to", dst);
    close(t);
  }
  return 0;
}
