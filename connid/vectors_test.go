package connid

import (
	"bytes"
	"errors"
	"testing"
)

// vectorCodec builds a codec for v with the draft's own server ID limit, so
// that the vectors with server IDs longer than MaxServerIDLen decode too.
func vectorCodec(t testing.TB, v Vector) *Codec {
	t.Helper()
	c, err := newCodec(v.Config(), draftMaxServerIDLen)
	if err != nil {
		t.Fatalf("newCodec(%+v): %v", v.Config(), err)
	}
	return c
}

// TestDraftVectors runs one subtest per draft test vector: encoding the server ID
// and nonce gives the CID byte for byte, decoding the CID gives the server ID
// back, and (for encrypted vectors) full decryption gives the nonce back.
func TestDraftVectors(t *testing.T) {
	vs := TestVectors()
	if len(vs) != 7 {
		t.Fatalf("TestVectors() has %d vectors, want 7", len(vs))
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			c := vectorCodec(t, v)
			got, err := c.EncodeServerID(v.ServerID, v.Nonce)
			if err != nil {
				t.Fatalf("EncodeServerID: %v", err)
			}
			if !bytes.Equal(got, v.CID) {
				t.Fatalf("EncodeServerID = %x, want %x", got, v.CID)
			}
			sid, err := c.DecodeServerID(v.CID)
			if err != nil {
				t.Fatalf("DecodeServerID(%x): %v", v.CID, err)
			}
			if !bytes.Equal(sid, v.ServerID) {
				t.Fatalf("DecodeServerID = %x, want %x", sid, v.ServerID)
			}
			id, err := c.Decode(v.CID)
			switch {
			case len(v.ServerID) > 8:
				if !errors.Is(err, ErrServerIDRange) {
					t.Fatalf("Decode of a %d-byte server ID: err %v, want ErrServerIDRange", len(v.ServerID), err)
				}
			case err != nil:
				t.Fatalf("Decode: %v", err)
			case id != v.InstanceID():
				t.Fatalf("Decode = %#x, want %#x", id, v.InstanceID())
			}
			if v.Key != nil && c.plainLen != 16 {
				body := append([]byte(nil), v.CID[1:]...)
				c.fourPassDecrypt(body)
				want := append(append([]byte(nil), v.ServerID...), v.Nonce...)
				if !bytes.Equal(body, want) {
					t.Fatalf("four-pass decrypt = %x, want %x", body, want)
				}
			}
			if got, want := v.InProfile(), len(v.ServerID) <= MaxServerIDLen; got != want {
				t.Fatalf("InProfile = %v, want %v", got, want)
			}
		})
	}
}

// TestVectorsFresh checks that TestVectors hands out copies: a caller that
// scribbles on one vector does not change the next caller's table.
func TestVectorsFresh(t *testing.T) {
	a := TestVectors()
	a[0].CID[0] ^= 0xff
	b := TestVectors()
	if a[0].CID[0] == b[0].CID[0] {
		t.Fatal("TestVectors shares its byte slices between calls")
	}
}
