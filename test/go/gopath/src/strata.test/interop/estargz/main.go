// estargz: stargz-snapshotter's own estargz package, driven from Strata's tests.
//
//	estargz build IN.tar OUT [-chunk N] [-prioritized a,b,...] [-legacy]
//	    builds an eStargz blob from a tar (estargz.Build, what ctr-remote and nerdctl use), prints
//	    {"tocDigest","diffID","size"} as JSON.
//	estargz verify BLOB TOCDIGEST
//	    opens the blob (estargz.Open), checks the TOC digest (VerifyTOC), reads every regular file through
//	    the chunk verifiers and checks each file against its TOC digest; prints one JSON line per file
//	    {"name","size","sha256"} then "PASS verify" or "FAIL verify: reason".
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

func fail(format string, a ...interface{}) {
	fmt.Printf("FAIL %s: %s\n", os.Args[1], fmt.Sprintf(format, a...))
	os.Exit(1)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: estargz build|verify ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "build":
		build(os.Args[2], os.Args[3], os.Args[4:])
	case "verify":
		verify(os.Args[2], os.Args[3])
	default:
		fmt.Fprintln(os.Stderr, "unknown command")
		os.Exit(2)
	}
}

func build(in, out string, args []string) {
	var opts []estargz.Option
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-chunk":
			n, _ := strconv.Atoi(args[i+1])
			opts = append(opts, estargz.WithChunkSize(n))
			i++
		case "-prioritized":
			opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(args[i+1], ",")))
			i++
		}
	}
	f, err := os.Open(in)
	if err != nil {
		fail("%v", err)
	}
	st, _ := f.Stat()
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()), opts...)
	if err != nil {
		fail("%v", err)
	}
	defer blob.Close()
	o, err := os.Create(out)
	if err != nil {
		fail("%v", err)
	}
	n, err := io.Copy(o, blob)
	if err != nil {
		fail("%v", err)
	}
	o.Close()
	res, _ := json.Marshal(map[string]interface{}{"tocDigest": blob.TOCDigest().String(), "diffID": blob.DiffID().String(), "size": n})
	fmt.Println(string(res))
}

func verify(path, tocDigest string) {
	f, err := os.Open(path)
	if err != nil {
		fail("%v", err)
	}
	st, _ := f.Stat()
	sr := io.NewSectionReader(f, 0, st.Size())
	r, err := estargz.Open(sr)
	if err != nil {
		fail("open: %v", err)
	}
	dgst, err := digest.Parse(tocDigest)
	if err != nil {
		fail("%v", err)
	}
	v, err := r.VerifyTOC(dgst)
	if err != nil {
		fail("VerifyTOC: %v", err)
	}
	// Walk the tree from the root.
	var names []string
	var walk func(dir string, e *estargz.TOCEntry)
	walk = func(dir string, e *estargz.TOCEntry) {
		e.ForeachChild(func(base string, c *estargz.TOCEntry) bool {
			p := base
			if dir != "" {
				p = dir + "/" + base
			}
			names = append(names, p)
			if c.Type == "dir" {
				walk(p, c)
			}
			return true
		})
	}
	root, ok := r.Lookup("")
	if !ok {
		fail("no root")
	}
	walk("", root)
	sort.Strings(names)
	for _, name := range names {
		e, _ := r.Lookup(name)
		line := map[string]interface{}{"name": name, "type": e.Type, "mode": e.Stat().Mode().Perm(), "uid": e.UID, "gid": e.GID}
		if e.Type == "symlink" {
			line["linkName"] = e.LinkName
		}
		if e.Type == "reg" {
			h := sha256.New()
			target := e.Name // a hard link's entry is its target's (chunks are kept under the target's name)
			var off int64
			for off < e.Size {
				ce, ok := r.ChunkEntryForOffset(target, off)
				if !ok {
					fail("no chunk of %s at %d", name, off)
				}
				cv, err := v.Verifier(ce)
				if err != nil {
					fail("verifier of %s at %d: %v", name, off, err)
				}
				fr, err := r.OpenFile(target)
				if err != nil {
					fail("%v", err)
				}
				buf := make([]byte, ce.ChunkSize)
				if _, err := fr.ReadAt(buf, ce.ChunkOffset); err != nil && err != io.EOF {
					fail("read %s at %d: %v", name, ce.ChunkOffset, err)
				}
				cv.Write(buf)
				if !cv.Verified() {
					fail("chunk of %s at %d does not match its digest", name, ce.ChunkOffset)
				}
				h.Write(buf)
				off = ce.ChunkOffset + ce.ChunkSize
			}
			sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
			if e.Digest != "" && e.Digest != sum {
				fail("%s has %s, its TOC digest is %s", name, sum, e.Digest)
			}
			line["size"] = e.Size
			line["sha256"] = sum
		}
		b, _ := json.Marshal(line)
		fmt.Println(string(b))
	}
	fmt.Println("PASS verify")
}
