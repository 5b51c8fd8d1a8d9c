/**
 * A file tree as comparable data: every path under a directory (a mounted snapshot) with its type, mode,
 * owner, size, content hash, link target and extended attributes. One python3 process walks it (never
 * following symlinks), so overlay-merged views are read exactly as a container would see them.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  link?: string;
  xattrs: Record<string, string>;
}

const WALK = String.raw`
import hashlib, json, os, stat, sys
root = sys.argv[1]
out = {}
def entry(p):
    st = os.lstat(p)
    m = st.st_mode
    e = {'mode': oct(stat.S_IMODE(m)), 'uid': st.st_uid, 'gid': st.st_gid, 'xattrs': {}}
    if stat.S_ISREG(m):
        e['type'] = 'file'; e['size'] = st.st_size
        with open(p, 'rb') as f: e['sha256'] = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISDIR(m): e['type'] = 'dir'
    elif stat.S_ISLNK(m): e['type'] = 'symlink'; e['link'] = os.readlink(p)
    elif stat.S_ISCHR(m): e['type'] = 'char'
    elif stat.S_ISBLK(m): e['type'] = 'block'
    elif stat.S_ISFIFO(m): e['type'] = 'fifo'
    else: e['type'] = 'socket'
    try:
        for n in sorted(os.listxattr(p, follow_symlinks=False)):
            e['xattrs'][n] = os.getxattr(p, n, follow_symlinks=False).hex()
    except OSError:
        pass
    return e
out['/'] = entry(root)
for d, dirs, files in os.walk(root):
    dirs.sort()
    for n in sorted(dirs + files):
        p = os.path.join(d, n)
        out['/' + os.path.relpath(p, root)] = entry(p)
json.dump(out, sys.stdout, sort_keys=True)
`;

/** Every path under `dir` ('/' for dir itself), sorted, with what a container would see of it. */
export async function readTree(dir: string): Promise<Record<string, TreeEntry>> {
  const { stdout } = await promisify(execFile)('python3', ['-c', WALK, dir], { maxBuffer: 256 << 20 });
  return JSON.parse(stdout) as Record<string, TreeEntry>;
}
