/*
 * strata-syncfs.node: syncfs(2) for Node, which has none. A snapshotter's Commit makes the layer it is about
 * to call committed durable with one journal commit of its file system (src/snapshots/fsutil.ts says why).
 * Spawning `sync -f` for it cost about 5-8 ms of process start per Commit; this runs the call on libuv's
 * thread pool and costs what the journal commit costs.
 *
 * JS API: syncfs(path, callback(errnoOrZero))
 */
#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  napi_async_work work;
  napi_ref callback;
  char *path;
  int err;
} SyncRequest;

static void execute(napi_env env, void *data) {
  (void)env;
  SyncRequest *r = data;
  int fd = open(r->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    r->err = errno;
    return;
  }
  r->err = syncfs(fd) == 0 ? 0 : errno;
  close(fd);
}

static void complete(napi_env env, napi_status status, void *data) {
  SyncRequest *r = data;
  napi_value cb, global, arg;
  napi_get_reference_value(env, r->callback, &cb);
  napi_get_global(env, &global);
  napi_create_int32(env, status == napi_ok ? r->err : ECANCELED, &arg);
  napi_call_function(env, global, cb, 1, &arg, NULL);
  napi_delete_reference(env, r->callback);
  napi_delete_async_work(env, r->work);
  free(r->path);
  free(r);
}

static napi_value sync_fs(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  size_t len = 0;
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], NULL, 0, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "syncfs(path, callback)");
    return NULL;
  }
  SyncRequest *r = calloc(1, sizeof *r);
  r->path = malloc(len + 1);
  napi_get_value_string_utf8(env, argv[0], r->path, len + 1, &len);
  napi_create_reference(env, argv[1], 1, &r->callback);
  napi_create_string_utf8(env, "strata.syncfs", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, r, &r->work);
  napi_queue_async_work(env, r->work);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "syncfs", NAPI_AUTO_LENGTH, sync_fs, NULL, &fn);
  napi_set_named_property(env, exports, "syncfs", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
