/*
 * strata-fuse3.node: a small N-API binding of libfuse 3's low-level (inode-based) API for src/fuse.
 *
 * One thread per mount runs fuse_session_loop: it reads the kernel's requests and hands each one to the JS
 * thread through a threadsafe function, then goes back to reading without waiting for the answer. JS answers
 * whenever it is ready (a read may wait on a registry) with the reply functions below, which call
 * fuse_reply_* from the JS thread: the low-level API allows any thread to reply at any time. So a slow read
 * holds only its own request, neither the loop nor the event loop. Large replies (read data) are written to
 * /dev/fuse by a writer thread, not by the JS thread. INIT, OPEN, OPENDIR, RELEASE, FORGET and
 * STATFS are answered here without a JS round trip (the tree is read-only and never forgets an inode).
 *
 * JS API (all synchronous, none blocks on the filesystem):
 *   mount(mountpoint, options, handler) -> handle   options: "ro,allow_other,..." for fuse_session_new
 *   handler(op, req, ino, a, b, name)                 called on the JS thread for each request; op EXITED
 *                                                     (req null) once the loop has ended
 *   unmount(handle, mountpoint) -> errno               lazy detach (umount2 MNT_DETACH)
 *   unref(handle)                                     the mount no longer keeps the process alive
 *   destroy(handle)                                   after EXITED and once every request is answered
 *   replyErr(req, errno) replyEntry(req, attr, timeout) replyAttr(req, attr, timeout) replyReadlink(req, s)
 *   replyBuf(req, buffer) replyXattrSize(req, n) replyDir(req, size, firstOffset, names, attrs, plusTimeout)
 * attr is a Float64Array [ino, mode, nlink, uid, gid, size, rdev, blocks, mtimeMs]; attrs is such rows
 * concatenated (only ino and mode matter to a directory listing).
 */
#define FUSE_USE_VERSION 35
#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <errno.h>
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

enum { OP_EXITED = 0, OP_LOOKUP = 1, OP_GETATTR = 2, OP_READLINK = 3, OP_READ = 4, OP_READDIR = 5,
       OP_GETXATTR = 6, OP_LISTXATTR = 7, OP_READDIRPLUS = 8 };

typedef struct mount_s {
  struct fuse_session *se;
  pthread_t thread;
  napi_threadsafe_function tsfn;
  int running;
  int joined;
  int queued; /* replies of this mount waiting in the writer's queue (under q_lock) */
} mount_t;

/* ---- the writer thread: large replies leave the JS thread ----
 * Answering a read means writing its bytes to /dev/fuse, where the kernel copies them into the reader's page
 * cache: about 0.6 ms per MiB here, too long to spend on the event loop. replyBuf of 64 KiB or more copies the
 * bytes into a pooled buffer (a plain memcpy into warm memory, several times cheaper) and queues them for one
 * process-wide writer thread. */
typedef struct reply_s {
  struct reply_s *next;
  fuse_req_t req;
  mount_t *m;
  size_t len;
  int cls; /* size class in the pool, or -1 */
  char data[];
} reply_t;

/* Freed reply buffers are kept by size class (64 KiB .. 2 MiB) and reused: a fresh 1 MiB malloc is an mmap
 * whose 256 pages fault in on the memcpy, which costs more than the copy itself. Under q_lock. */
#define POOL_CLASSES 6
#define POOL_KEEP 16
static reply_t *pool[POOL_CLASSES];
static int pooled[POOL_CLASSES];
static int class_of(size_t len) {
  for (int c = 0; c < POOL_CLASSES; c++) if (len <= ((size_t)64 * 1024) << c) return c;
  return -1;
}
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t q_done = PTHREAD_COND_INITIALIZER;
static reply_t *q_head, *q_tail;
static int writer_started;
#define ASYNC_REPLY_MIN (64 * 1024)

static void *writer_main(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&q_lock);
    while (!q_head) pthread_cond_wait(&q_work, &q_lock);
    reply_t *r = q_head;
    q_head = r->next;
    if (!q_head) q_tail = NULL;
    pthread_mutex_unlock(&q_lock);
    fuse_reply_buf(r->req, r->data, r->len);
    pthread_mutex_lock(&q_lock);
    r->m->queued--;
    pthread_cond_broadcast(&q_done);
    int keep = r->cls >= 0 && pooled[r->cls] < POOL_KEEP;
    if (keep) {
      r->next = pool[r->cls];
      pool[r->cls] = r;
      pooled[r->cls]++;
    }
    pthread_mutex_unlock(&q_lock);
    if (!keep) free(r);
  }
  return NULL;
}

/* 0 when queued; -1 to reply inline instead (no memory, no thread). Called on the JS thread. */
static int queue_reply(fuse_req_t req, const void *data, size_t len) {
  int cls = class_of(len);
  reply_t *r = NULL;
  if (cls >= 0) {
    pthread_mutex_lock(&q_lock);
    if (pool[cls]) {
      r = pool[cls];
      pool[cls] = r->next;
      pooled[cls]--;
    }
    pthread_mutex_unlock(&q_lock);
  }
  if (!r) r = malloc(sizeof *r + (cls >= 0 ? ((size_t)64 * 1024) << cls : len));
  if (!r) return -1;
  r->cls = cls;
  r->next = NULL;
  r->req = req;
  r->m = fuse_req_userdata(req);
  r->len = len;
  memcpy(r->data, data, len);
  pthread_mutex_lock(&q_lock);
  if (!writer_started) {
    pthread_t t;
    if (pthread_create(&t, NULL, writer_main, NULL) != 0) {
      pthread_mutex_unlock(&q_lock);
      free(r);
      return -1;
    }
    pthread_detach(t);
    writer_started = 1;
  }
  r->m->queued++;
  if (q_tail) q_tail->next = r; else q_head = r;
  q_tail = r;
  pthread_cond_signal(&q_work);
  pthread_mutex_unlock(&q_lock);
  return 0;
}

typedef struct {
  int op;
  fuse_req_t req;
  double ino, a, b;
  char *name;
} call_t;

/* libfuse's last log line, for the mount error (libfuse logs to stderr otherwise). */
static __thread char last_log[512];
static void log_func(enum fuse_log_level level, const char *fmt, va_list ap) {
  (void)level;
  vsnprintf(last_log, sizeof last_log, fmt, ap);
  size_t n = strlen(last_log);
  while (n > 0 && last_log[n - 1] == '\n') last_log[--n] = 0;
}

#define CHECK(call)                                                      \
  do {                                                                   \
    if ((call) != napi_ok) {                                             \
      napi_throw_error(env, NULL, "strata-fuse3: N-API call failed: " #call); \
      return NULL;                                                       \
    }                                                                    \
  } while (0)

/* ---- the loop thread -> JS ---- */

static void enqueue(fuse_req_t req, int op, fuse_ino_t ino, double a, double b, const char *name) {
  mount_t *m = fuse_req_userdata(req);
  call_t *c = malloc(sizeof *c);
  if (!c) { fuse_reply_err(req, ENOMEM); return; }
  c->op = op; c->req = req; c->ino = (double)ino; c->a = a; c->b = b;
  c->name = name ? strdup(name) : NULL;
  if (napi_call_threadsafe_function(m->tsfn, c, napi_tsfn_nonblocking) != napi_ok) {
    fuse_reply_err(req, EIO);
    free(c->name);
    free(c);
  }
}

static void call_js(napi_env env, napi_value handler, void *context, void *data) {
  (void)context;
  call_t *c = data;
  if (env == NULL) { /* the function is being torn down: nobody will answer */
    if (c->req) fuse_reply_err(c->req, EIO);
    free(c->name);
    free(c);
    return;
  }
  napi_value argv[6], undef;
  napi_get_undefined(env, &undef);
  napi_create_int32(env, c->op, &argv[0]);
  if (c->req) napi_create_external(env, c->req, NULL, NULL, &argv[1]); else napi_get_null(env, &argv[1]);
  napi_create_double(env, c->ino, &argv[2]);
  napi_create_double(env, c->a, &argv[3]);
  napi_create_double(env, c->b, &argv[4]);
  if (c->name) napi_create_string_utf8(env, c->name, NAPI_AUTO_LENGTH, &argv[5]); else argv[5] = undef;
  free(c->name);
  free(c);
  napi_value result;
  if (napi_call_function(env, undef, handler, 6, argv, &result) == napi_pending_exception) {
    /* the handler must not throw; if it does, report it as uncaught (the request stays unanswered) */
    napi_value ex;
    napi_get_and_clear_last_exception(env, &ex);
    napi_fatal_exception(env, ex);
  }
}

static void ll_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
}
static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) { enqueue(req, OP_LOOKUP, parent, 0, 0, name); }
static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n) { (void)ino; (void)n; fuse_reply_none(req); }
static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f) { (void)count; (void)f; fuse_reply_none(req); }
static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) { (void)fi; enqueue(req, OP_GETATTR, ino, 0, 0, NULL); }
static void ll_readlink(fuse_req_t req, fuse_ino_t ino) { enqueue(req, OP_READLINK, ino, 0, 0, NULL); }
static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  if ((fi->flags & O_ACCMODE) != O_RDONLY) { fuse_reply_err(req, EROFS); return; }
  fi->keep_cache = 1; /* the contents never change: keep the page cache across opens */
  fuse_reply_open(req, fi);
}
static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  enqueue(req, OP_READ, ino, (double)size, (double)off, NULL);
}
static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  enqueue(req, OP_READDIR, ino, (double)size, (double)off, NULL);
}
static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  enqueue(req, OP_READDIRPLUS, ino, (double)size, (double)off, NULL);
}
static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) { enqueue(req, OP_GETXATTR, ino, (double)size, 0, name); }
static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) { enqueue(req, OP_LISTXATTR, ino, (double)size, 0, NULL); }

static const struct fuse_lowlevel_ops ops = {
  .init = ll_init,
  .lookup = ll_lookup,
  .forget = ll_forget,
  .forget_multi = ll_forget_multi,
  .getattr = ll_getattr,
  .readlink = ll_readlink,
  .open = ll_open,
  .read = ll_read,
  .readdir = ll_readdir,
  .readdirplus = ll_readdirplus,
  .getxattr = ll_getxattr,
  .listxattr = ll_listxattr,
};

static void *loop_main(void *arg) {
  mount_t *m = arg;
  fuse_session_loop(m->se);
  call_t *c = calloc(1, sizeof *c);
  if (c) {
    c->op = OP_EXITED;
    napi_call_threadsafe_function(m->tsfn, c, napi_tsfn_blocking);
  }
  napi_release_threadsafe_function(m->tsfn, napi_tsfn_release);
  return NULL;
}

/* ---- JS -> libfuse ---- */

/* The handle is collected: free the record once its loop is over (a loop still running keeps using it; that
 * only happens to a mount whose JS side was dropped without unmount, and then the record stays). */
static void finalize_mount(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  mount_t *m = data;
  if (m->joined) free(m);
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char mountpoint[4096], options[4096];
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[0], mountpoint, sizeof mountpoint, &len));
  CHECK(napi_get_value_string_utf8(env, argv[1], options, sizeof options, &len));

  mount_t *m = calloc(1, sizeof *m);
  if (!m) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  char *fargv[] = { "strata-fuse", "-o", options, NULL };
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  last_log[0] = 0;
  fuse_set_log_func(log_func);
  m->se = fuse_session_new(&args, &ops, sizeof ops, m);
  if (!m->se) {
    free(m);
    napi_throw_error(env, "EINVAL", last_log[0] ? last_log : "fuse_session_new failed");
    return NULL;
  }
  if (fuse_session_mount(m->se, mountpoint) != 0) {
    fuse_session_destroy(m->se);
    free(m);
    napi_throw_error(env, "EMOUNT", last_log[0] ? last_log : "fuse_session_mount failed");
    return NULL;
  }
  napi_value name;
  CHECK(napi_create_string_utf8(env, "strata-fuse3", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[2], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &m->tsfn));
  if (pthread_create(&m->thread, NULL, loop_main, m) != 0) {
    fuse_session_unmount(m->se);
    fuse_session_destroy(m->se);
    napi_release_threadsafe_function(m->tsfn, napi_tsfn_abort);
    free(m);
    napi_throw_error(env, "EAGAIN", "cannot start the FUSE loop thread");
    return NULL;
  }
  m->running = 1;
  napi_value handle;
  CHECK(napi_create_external(env, m, finalize_mount, NULL, &handle));
  return handle;
}

static mount_t *get_mount(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p) {
    napi_throw_type_error(env, NULL, "not a mount handle");
    return NULL;
  }
  return p;
}

/* unmount(handle, mountpoint) -> 0 or an errno: umount2(MNT_DETACH), a lazy detach. Not
 * fuse_session_unmount: that closes the session's fd, which would cut off the files still open; detached,
 * the mount keeps being served until its last user closes it, then the kernel ends the connection and the
 * loop ends. EPERM (not root) is for the caller to retry with `fusermount3 -u -z`. */
static napi_value js_unmount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  mount_t *m = get_mount(env, argv[0]);
  if (!m) return NULL;
  char mountpoint[4096];
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[1], mountpoint, sizeof mountpoint, &len));
  int err = umount2(mountpoint, MNT_DETACH) == 0 ? 0 : errno;
  napi_value r;
  CHECK(napi_create_int32(env, err, &r));
  return r;
}

/* unref(handle): a detached mount still held open by someone no longer keeps this process alive. */
static napi_value js_unref(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  mount_t *m = get_mount(env, argv[0]);
  if (!m) return NULL;
  if (m->running && !m->joined) { napi_unref_threadsafe_function(env, m->tsfn); m->running = 0; }
  return NULL;
}

/* Joins the loop thread (it has ended) and frees the session: call only
 * after the EXITED event and once every request has been answered. */
static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  mount_t *m = get_mount(env, argv[0]);
  if (!m || m->joined) return NULL;
  /* the writer may still hold replies of this session: they go out before the session is freed */
  pthread_mutex_lock(&q_lock);
  while (m->queued > 0) pthread_cond_wait(&q_done, &q_lock);
  pthread_mutex_unlock(&q_lock);
  pthread_join(m->thread, NULL);
  m->joined = 1;
  fuse_session_destroy(m->se);
  m->se = NULL;
  return NULL;
}

static fuse_req_t get_req(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p) {
    napi_throw_type_error(env, NULL, "not a request");
    return NULL;
  }
  return p;
}

static void ms_to_timespec(double ms, struct timespec *ts) {
  long long sec = (long long)(ms / 1000);
  if ((double)sec * 1000 > ms) sec--;
  ts->tv_sec = sec;
  ts->tv_nsec = (long)((ms - (double)sec * 1000) * 1e6);
}

static int to_stat(napi_env env, napi_value v, struct stat *st) {
  double *d;
  size_t n;
  napi_typedarray_type t;
  if (napi_get_typedarray_info(env, v, &t, &n, (void **)&d, NULL, NULL) != napi_ok || t != napi_float64_array || n < 9) {
    napi_throw_type_error(env, NULL, "attr must be a Float64Array of 9");
    return -1;
  }
  memset(st, 0, sizeof *st);
  st->st_ino = (ino_t)d[0];
  st->st_mode = (mode_t)d[1];
  st->st_nlink = (nlink_t)d[2];
  st->st_uid = (uid_t)d[3];
  st->st_gid = (gid_t)d[4];
  st->st_size = (off_t)d[5];
  st->st_rdev = (dev_t)d[6];
  st->st_blocks = (blkcnt_t)d[7];
  st->st_blksize = 4096;
  ms_to_timespec(d[8], &st->st_mtim);
  st->st_atim = st->st_mtim;
  st->st_ctim = st->st_mtim;
  return 0;
}

#define ARGS(n)                                                 \
  size_t argc = n;                                              \
  napi_value argv[n];                                           \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));  \
  fuse_req_t req = get_req(env, argv[0]);                       \
  if (!req) return NULL;

static napi_value js_reply_err(napi_env env, napi_callback_info info) {
  ARGS(2)
  int32_t e;
  CHECK(napi_get_value_int32(env, argv[1], &e));
  fuse_reply_err(req, e);
  return NULL;
}

static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  ARGS(3)
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  if (to_stat(env, argv[1], &e.attr) != 0) return NULL;
  double timeout;
  CHECK(napi_get_value_double(env, argv[2], &timeout));
  e.ino = e.attr.st_ino;
  e.generation = 1;
  e.attr_timeout = timeout;
  e.entry_timeout = timeout;
  fuse_reply_entry(req, &e);
  return NULL;
}

static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  ARGS(3)
  struct stat st;
  if (to_stat(env, argv[1], &st) != 0) return NULL;
  double timeout;
  CHECK(napi_get_value_double(env, argv[2], &timeout));
  fuse_reply_attr(req, &st, timeout);
  return NULL;
}

static napi_value js_reply_readlink(napi_env env, napi_callback_info info) {
  ARGS(2)
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[1], NULL, 0, &len));
  char *s = malloc(len + 1);
  if (!s) { fuse_reply_err(req, ENOMEM); return NULL; }
  napi_get_value_string_utf8(env, argv[1], s, len + 1, &len);
  fuse_reply_readlink(req, s);
  free(s);
  return NULL;
}

static napi_value js_reply_buf(napi_env env, napi_callback_info info) {
  ARGS(2)
  void *data;
  size_t len;
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  if (len < ASYNC_REPLY_MIN || queue_reply(req, data, len) != 0) fuse_reply_buf(req, data, len);
  return NULL;
}

static napi_value js_reply_xattr_size(napi_env env, napi_callback_info info) {
  ARGS(2)
  double n;
  CHECK(napi_get_value_double(env, argv[1], &n));
  fuse_reply_xattr(req, (size_t)n);
  return NULL;
}

/* replyDir(req, size, firstOffset, names[], attrs, plusTimeout): packs entries until `size` bytes are full;
 * entry i gets the offset firstOffset + i + 1 (the kernel's cookie for the next readdir). plusTimeout >= 0
 * answers a READDIRPLUS: each entry carries its attributes (and a lookup, which this read-only tree never
 * needs forgotten), valid that many seconds. */
static napi_value js_reply_dir(napi_env env, napi_callback_info info) {
  ARGS(6)
  double plus;
  CHECK(napi_get_value_double(env, argv[5], &plus));
  double dsize, dfirst;
  CHECK(napi_get_value_double(env, argv[1], &dsize));
  CHECK(napi_get_value_double(env, argv[2], &dfirst));
  uint32_t count;
  CHECK(napi_get_array_length(env, argv[3], &count));
  double *attrs;
  size_t nattrs;
  napi_typedarray_type t;
  CHECK(napi_get_typedarray_info(env, argv[4], &t, &nattrs, (void **)&attrs, NULL, NULL));
  size_t size = (size_t)dsize, pos = 0;
  char *buf = malloc(size ? size : 1);
  if (!buf) { fuse_reply_err(req, ENOMEM); return NULL; }
  char name[1024];
  for (uint32_t i = 0; i < count && (size_t)(i + 1) * 9 <= nattrs; i++) {
    napi_value v;
    size_t nlen;
    CHECK(napi_get_element(env, argv[3], i, &v));
    CHECK(napi_get_value_string_utf8(env, v, name, sizeof name, &nlen));
    size_t need;
    if (plus >= 0) {
      struct fuse_entry_param e;
      memset(&e, 0, sizeof e);
      double *d = attrs + (size_t)i * 9;
      e.attr.st_ino = (ino_t)d[0];
      e.attr.st_mode = (mode_t)d[1];
      e.attr.st_nlink = (nlink_t)d[2];
      e.attr.st_uid = (uid_t)d[3];
      e.attr.st_gid = (gid_t)d[4];
      e.attr.st_size = (off_t)d[5];
      e.attr.st_rdev = (dev_t)d[6];
      e.attr.st_blocks = (blkcnt_t)d[7];
      e.attr.st_blksize = 4096;
      ms_to_timespec(d[8], &e.attr.st_mtim);
      e.attr.st_atim = e.attr.st_mtim;
      e.attr.st_ctim = e.attr.st_mtim;
      e.ino = e.attr.st_ino;
      e.generation = 1;
      e.attr_timeout = plus;
      e.entry_timeout = plus;
      need = fuse_add_direntry_plus(req, buf + pos, size - pos, name, &e, (off_t)dfirst + i + 1);
    } else {
      struct stat st;
      memset(&st, 0, sizeof st);
      st.st_ino = (ino_t)attrs[i * 9];
      st.st_mode = (mode_t)attrs[i * 9 + 1];
      need = fuse_add_direntry(req, buf + pos, size - pos, name, &st, (off_t)dfirst + i + 1);
    }
    if (need > size - pos) break;
    pos += need;
  }
  fuse_reply_buf(req, buf, pos);
  free(buf);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  struct { const char *name; napi_callback fn; } fns[] = {
    { "mount", js_mount }, { "unmount", js_unmount }, { "destroy", js_destroy }, { "unref", js_unref },
    { "replyErr", js_reply_err }, { "replyEntry", js_reply_entry }, { "replyAttr", js_reply_attr },
    { "replyReadlink", js_reply_readlink }, { "replyBuf", js_reply_buf },
    { "replyXattrSize", js_reply_xattr_size }, { "replyDir", js_reply_dir },
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    CHECK(napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f));
    CHECK(napi_set_named_property(env, exports, fns[i].name, f));
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
