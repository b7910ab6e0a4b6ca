// Command c2sp-check checks a Sigil transparency log from the outside with the
// Go reference code for signed notes and transparency logs
// (golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog): the
// checkpoint (C2SP tlog-checkpoint as a C2SP signed-note), every hash tile
// and entry bundle (C2SP tlog-tiles), the inclusion of every leaf (RFC 6962
// section 2.1.1), and consistency with an older checkpoint (section 2.1.2).
//
// Usage:
//
//	c2sp-check -vkey VKEY -url BASE [-old-checkpoint FILE] [-save-checkpoint FILE]
//
// It prints one "ok: ..." line and exits 0, or names what failed and exits 1.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// C2SP tlog-tiles fixes the tile height at 8: 256 hashes or entries a tile.
const (
	tileHeight = 8
	tileWidth  = 1 << tileHeight
)

// Bounds a response so that a broken server cannot exhaust memory.
const maxBody = 64 << 20

func main() {
	vkey := flag.String("vkey", "", "verifier key of the log: <name>+<hex keyid>+<base64 key>")
	base := flag.String("url", "", "base URL of the log, e.g. http://127.0.0.1:8080/log")
	oldPath := flag.String("old-checkpoint", "", "an earlier signed checkpoint the current one must be consistent with")
	savePath := flag.String("save-checkpoint", "", "write the fetched signed checkpoint to this file")
	flag.Parse()
	if *vkey == "" || *base == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	summary, err := check(*vkey, *base, *oldPath, *savePath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fail: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(summary)
}

func check(vkey, base, oldPath, savePath string) (string, error) {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return "", fmt.Errorf("verifier key %q: %v", vkey, err)
	}
	c := &client{base: strings.TrimSuffix(base, "/"), http: &http.Client{Timeout: 30 * time.Second}}

	key, err := c.get("key")
	if err != nil {
		return "", err
	}
	if string(key) != vkey+"\n" {
		return "", fmt.Errorf("key endpoint serves %q, want %q followed by a newline", key, vkey)
	}

	raw, err := c.get("checkpoint")
	if err != nil {
		return "", err
	}
	if savePath != "" {
		if err := os.WriteFile(savePath, raw, 0o644); err != nil {
			return "", fmt.Errorf("saving checkpoint: %v", err)
		}
	}
	cp, err := openCheckpoint(raw, verifier)
	if err != nil {
		return "", fmt.Errorf("checkpoint: %v", err)
	}

	var old *checkpoint
	if oldPath != "" {
		oldRaw, err := os.ReadFile(oldPath)
		if err != nil {
			return "", fmt.Errorf("old checkpoint: %v", err)
		}
		o, err := openCheckpoint(oldRaw, verifier)
		if err != nil {
			return "", fmt.Errorf("old checkpoint %s: %v", oldPath, err)
		}
		old = &o
	}

	checked := int64(0)
	var hashes tlog.HashReader
	if cp.size == 0 {
		if err := checkEmptyRoot(cp.root); err != nil {
			return "", fmt.Errorf("checkpoint: %v", err)
		}
	} else {
		tree := tlog.Tree{N: cp.size, Hash: cp.root}
		tiles := &tileReader{c: c, cache: map[tlog.Tile][]byte{}}
		hashes = tlog.TileHashReader(tree, tiles)
		if checked, err = checkLeaves(c, cp, tiles, hashes); err != nil {
			return "", err
		}
	}
	if old != nil {
		if err := checkConsistency(c, *old, cp, hashes); err != nil {
			return "", err
		}
	}

	summary := fmt.Sprintf("ok: origin=%s size=%d leaves checked=%d", cp.origin, cp.size, checked)
	if old != nil {
		summary += fmt.Sprintf(" consistent with size=%d", old.size)
	}
	return summary, nil
}

// checkLeaves proves every leaf of every entry bundle included in the signed
// tree, through tiles that tlog authenticates against the signed root, and
// checks a few of the server's own inclusion proofs.
func checkLeaves(c *client, cp checkpoint, tiles *tileReader, hashes tlog.HashReader) (int64, error) {
	leaves := make([][]byte, 0, cp.size)
	for n := int64(0); n*tileWidth < cp.size; n++ {
		w := tileWidth
		if rest := cp.size - n*tileWidth; rest < tileWidth {
			w = int(rest)
		}
		bundle, err := c.entryBundle(n, w)
		if err != nil {
			return 0, err
		}
		// Not yet authenticated: compared only so that a mismatch names
		// its leaf, where tlog would only say some tile is inconsistent.
		data, err := tiles.ReadTiles([]tlog.Tile{{H: tileHeight, L: 0, N: n, W: w}})
		if err != nil {
			return 0, err
		}
		for j, leaf := range bundle {
			index := n*tileWidth + int64(j)
			var inTile tlog.Hash
			copy(inTile[:], data[0][j*tlog.HashSize:])
			if got := tlog.RecordHash(leaf); got != inTile {
				return 0, fmt.Errorf("leaf %d: level 0 tile %s has hash %v, the entry hashes to %v", index, indexPath(n), inTile, got)
			}
		}
		leaves = append(leaves, bundle...)
	}

	if root, err := tlog.TreeHash(cp.size, hashes); err != nil {
		return 0, fmt.Errorf("hash tiles against the signed root of size %d: %v", cp.size, err)
	} else if root != cp.root {
		return 0, fmt.Errorf("hash tiles give root %v, the checkpoint says %v", root, cp.root)
	}

	for i, leaf := range leaves {
		index := int64(i)
		var object map[string]json.RawMessage
		if err := json.Unmarshal(leaf, &object); err != nil {
			return 0, fmt.Errorf("leaf %d: not a JSON object: %v", index, err)
		}
		proof, err := tlog.ProveRecord(cp.size, index, hashes)
		if err != nil {
			return 0, fmt.Errorf("leaf %d: inclusion proof from tiles: %v", index, err)
		}
		if err := tlog.CheckRecord(proof, cp.size, cp.root, index, tlog.RecordHash(leaf)); err != nil {
			return 0, fmt.Errorf("leaf %d: not included in the tree of size %d: %v", index, cp.size, err)
		}
	}

	for _, index := range sampleIndexes(cp.size) {
		p, err := c.inclusionProof(index, cp.size)
		if err != nil {
			return 0, err
		}
		if err := tlog.CheckRecord(p, cp.size, cp.root, index, tlog.RecordHash(leaves[index])); err != nil {
			return 0, fmt.Errorf("leaf %d: server inclusion proof for size %d: %v", index, cp.size, err)
		}
	}
	return int64(len(leaves)), nil
}

// checkEmptyRoot checks the root of a tree of size 0, which RFC 6962 section
// 2.1 defines as SHA-256 of nothing (tlog uses all zeros, so not via tlog).
func checkEmptyRoot(root tlog.Hash) error {
	if root != tlog.Hash(sha256.Sum256(nil)) {
		return fmt.Errorf("empty tree with root %v, want SHA-256 of the empty string", root)
	}
	return nil
}

// checkConsistency shows the tree of the old checkpoint is a prefix of the
// current one, once from authenticated tiles and once from the server's proof.
func checkConsistency(c *client, old, cp checkpoint, hashes tlog.HashReader) error {
	switch {
	case old.size > cp.size:
		return fmt.Errorf("rollback: old checkpoint has size %d, current has size %d", old.size, cp.size)
	case old.size == cp.size:
		if old.root != cp.root {
			return fmt.Errorf("fork: two checkpoints of size %d with roots %v and %v", cp.size, old.root, cp.root)
		}
		return nil
	case old.size == 0:
		if err := checkEmptyRoot(old.root); err != nil {
			return fmt.Errorf("old checkpoint: %v", err)
		}
		return nil
	}

	proof, err := tlog.ProveTree(cp.size, old.size, hashes)
	if err != nil {
		return fmt.Errorf("consistency proof %d -> %d from tiles: %v", old.size, cp.size, err)
	}
	if err := tlog.CheckTree(proof, cp.size, cp.root, old.size, old.root); err != nil {
		return fmt.Errorf("fork: old checkpoint (size %d, root %v) is not a prefix of the current one (size %d, root %v): %v",
			old.size, old.root, cp.size, cp.root, err)
	}

	served, err := c.consistencyProof(old.size, cp.size)
	if err != nil {
		return err
	}
	if err := tlog.CheckTree(served, cp.size, cp.root, old.size, old.root); err != nil {
		return fmt.Errorf("server consistency proof %d -> %d: %v", old.size, cp.size, err)
	}
	return nil
}

// sampleIndexes picks the leaves whose server proofs are cross-checked: the
// ends, the middle, and both sides of the first tile boundary.
func sampleIndexes(size int64) []int64 {
	var out []int64
	seen := map[int64]bool{}
	for _, i := range []int64{0, 1, size / 2, tileWidth - 1, tileWidth, size - 1} {
		if i >= 0 && i < size && !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	return out
}

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

// openCheckpoint verifies the signed note with the log's key and parses its
// body per C2SP tlog-checkpoint: origin, decimal size, base64 root hash. Sigil
// writes no extension lines, so any is an error here.
func openCheckpoint(raw []byte, verifier note.Verifier) (checkpoint, error) {
	n, err := note.Open(raw, note.VerifierList(verifier))
	if err != nil {
		return checkpoint{}, fmt.Errorf("signed note: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(n.Text, "\n"), "\n")
	if len(lines) != 3 {
		return checkpoint{}, fmt.Errorf("body has %d lines, want 3 (origin, size, root)", len(lines))
	}
	var cp checkpoint
	cp.origin = lines[0]
	if cp.origin != verifier.Name() {
		return checkpoint{}, fmt.Errorf("origin %q differs from the key name %q", cp.origin, verifier.Name())
	}
	cp.size, err = strconv.ParseInt(lines[1], 10, 64)
	if err != nil || cp.size < 0 || strconv.FormatInt(cp.size, 10) != lines[1] {
		return checkpoint{}, fmt.Errorf("size %q is not a canonical decimal", lines[1])
	}
	root, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return checkpoint{}, fmt.Errorf("root %q is not a base64 SHA-256 hash", lines[2])
	}
	copy(cp.root[:], root)
	return cp, nil
}

type client struct {
	base string
	http *http.Client
}

var errNotFound = errors.New("not found")

// get fetches base/path and returns the body of a 200 answer.
func (c *client) get(path string) ([]byte, error) {
	u := c.base + "/" + path
	resp, err := c.http.Get(u)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", u, err)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("GET %s: body over %d bytes", u, maxBody)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("GET %s: %w", u, errNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d: %.200q", u, resp.StatusCode, body)
	}
	return body, nil
}

// getTile fetches a tile of width w, falling back to the full tile when the
// partial one is gone: C2SP tlog-tiles lets a log delete partial tiles once
// the tree has grown past them, and the tree may grow while this runs.
func (c *client) getTile(path string, w int) (body []byte, full bool, err error) {
	if w == tileWidth {
		body, err = c.get(path)
		return body, true, err
	}
	body, err = c.get(fmt.Sprintf("%s.p/%d", path, w))
	if errors.Is(err, errNotFound) {
		body, err = c.get(path)
		return body, true, err
	}
	return body, false, err
}

// entryBundle fetches bundle n of width w and splits its entries, each a
// big-endian uint16 length and that many bytes.
func (c *client) entryBundle(n int64, w int) ([][]byte, error) {
	path := "tile/entries/" + indexPath(n)
	data, full, err := c.getTile(path, w)
	if err != nil {
		return nil, fmt.Errorf("entry bundle %d: %v", n, err)
	}
	want := w
	if full {
		want = tileWidth
	}
	var entries [][]byte
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, fmt.Errorf("entry bundle %d: truncated length after %d entries", n, len(entries))
		}
		size := int(binary.BigEndian.Uint16(data))
		if len(data)-2 < size {
			return nil, fmt.Errorf("entry bundle %d: leaf %d truncated: %d bytes, want %d",
				n, n*tileWidth+int64(len(entries)), len(data)-2, size)
		}
		entries = append(entries, data[2:2+size])
		data = data[2+size:]
	}
	if len(entries) != want {
		return nil, fmt.Errorf("entry bundle %d: %d entries, want %d", n, len(entries), want)
	}
	return entries[:w], nil
}

type proofAnswer struct {
	Index  *int64   `json:"index"`
	From   *int64   `json:"from"`
	Size   int64    `json:"size"`
	Hashes []string `json:"hashes"`
}

func (c *client) inclusionProof(index, size int64) (tlog.RecordProof, error) {
	what := fmt.Sprintf("server inclusion proof for leaf %d in size %d", index, size)
	a, err := c.proof(fmt.Sprintf("proof/inclusion?index=%d&size=%d", index, size), what)
	if err != nil {
		return nil, err
	}
	if a.Index == nil || *a.Index != index || a.Size != size {
		return nil, fmt.Errorf("%s: answer is for index %v size %d", what, jsonInt(a.Index), a.Size)
	}
	return parseHashes(a.Hashes, what)
}

func (c *client) consistencyProof(from, size int64) (tlog.TreeProof, error) {
	what := fmt.Sprintf("server consistency proof %d -> %d", from, size)
	a, err := c.proof(fmt.Sprintf("proof/consistency?from=%d&size=%d", from, size), what)
	if err != nil {
		return nil, err
	}
	if a.From == nil || *a.From != from || a.Size != size {
		return nil, fmt.Errorf("%s: answer is for from %v size %d", what, jsonInt(a.From), a.Size)
	}
	return parseHashes(a.Hashes, what)
}

func (c *client) proof(path, what string) (proofAnswer, error) {
	var a proofAnswer
	body, err := c.get(path)
	if err != nil {
		return a, fmt.Errorf("%s: %v", what, err)
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return a, fmt.Errorf("%s: %v", what, err)
	}
	return a, nil
}

func jsonInt(p *int64) string {
	if p == nil {
		return "(missing)"
	}
	return strconv.FormatInt(*p, 10)
}

func parseHashes(in []string, what string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(in))
	for i, s := range in {
		b, err := base64.StdEncoding.Strict().DecodeString(s)
		if err != nil || len(b) != tlog.HashSize {
			return nil, fmt.Errorf("%s: hash %d %q is not a base64 SHA-256 hash", what, i, s)
		}
		copy(out[i][:], b)
	}
	return out, nil
}

// tileReader serves tlog the hash tiles at their C2SP paths. tlog's own
// Tile.Path is the sumdb layout (tile/H/L/N), which C2SP does not use.
type tileReader struct {
	c *client
	// Raw tiles as served: tlog authenticates them against the signed root
	// on every read, so caching them unverified is safe.
	cache map[tlog.Tile][]byte
}

func (r *tileReader) Height() int { return tileHeight }

func (r *tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		if data, ok := r.cache[t]; ok {
			out[i] = data
			continue
		}
		path := fmt.Sprintf("tile/%d/%s", t.L, indexPath(t.N))
		data, full, err := r.c.getTile(path, t.W)
		if err != nil {
			return nil, fmt.Errorf("hash tile level %d number %d width %d: %v", t.L, t.N, t.W, err)
		}
		want := t.W
		if full {
			want = tileWidth
		}
		if len(data) != want*tlog.HashSize {
			return nil, fmt.Errorf("hash tile level %d number %d: %d bytes, want %d", t.L, t.N, len(data), want*tlog.HashSize)
		}
		out[i] = data[:t.W*tlog.HashSize]
		r.cache[t] = out[i]
	}
	return out, nil
}

func (r *tileReader) SaveTiles([]tlog.Tile, [][]byte) {}

// indexPath encodes a tile number as C2SP tlog-tiles path elements: groups of
// three digits, all but the last prefixed with "x" (1234067 -> x001/x234/067).
func indexPath(n int64) string {
	s := fmt.Sprintf("%03d", n)
	for len(s)%3 != 0 {
		s = "0" + s
	}
	var b bytes.Buffer
	for i := 0; i < len(s); i += 3 {
		if i > 0 {
			b.WriteByte('/')
		}
		if i+3 < len(s) {
			b.WriteByte('x')
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}
