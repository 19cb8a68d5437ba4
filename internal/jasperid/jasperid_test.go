package jasperid

import (
	"testing"
	"unicode/utf16"

	"github.com/google/uuid"
)

func TestLockIDsMatchHashOfTheirNames(t *testing.T) {
	cases := []struct {
		name string
		want int32
	}{
		{"scheduled-jobs", ScheduledJobLockID},
		{"recover-incoming-messages", IncomingMessageLockID},
		{"recover-outgoing-messages", OutgoingMessageLockID},
		{"jasper-reassign-envelopes", ReassignmentLockID},
	}
	for _, c := range cases {
		if got := DeterministicHashCode(c.name); got != c.want {
			t.Errorf("DeterministicHashCode(%q) = %d, want %d", c.name, got, c.want)
		}
	}
}

// referenceHash is a deliberately naive transcription of the C# source
// using int64 arithmetic truncated to 32 bits after every step, to
// cross-check the int32 overflow behaviour of DeterministicHashCode.
func referenceHash(s string) int32 {
	u := utf16.Encode([]rune(s))
	wrap := func(v int64) int64 { return int64(int32(uint32(uint64(v)))) }
	h1 := wrap((5381 << 16) + 5381)
	h2 := h1
	for i := 0; i < len(u); i += 2 {
		h1 = wrap(wrap(wrap(h1*32)+h1) ^ int64(u[i]))
		if i == len(u)-1 {
			break
		}
		h2 = wrap(wrap(wrap(h2*32)+h2) ^ int64(u[i+1]))
	}
	return int32(wrap(h1 + wrap(h2*1566083941)))
}

func TestDeterministicHashCodeEdgeCases(t *testing.T) {
	// Empty string: both accumulators keep their seed.
	seed := int32((5381 << 16) + 5381)
	if got, want := DeterministicHashCode(""), seed+seed*1566083941; got != want {
		t.Errorf("empty: got %d, want %d", got, want)
	}
	for _, s := range []string{
		"", "a", "ab", "abc", "scheduled-jobs",
		"0f8fad5b-d9cb-469f-a165-70867728950e",
		"héllo wörld", "日本語", "emoji 😀 pair", "odd😀", "\xff\xfe",
	} {
		if got, want := DeterministicHashCode(s), referenceHash(s); got != want {
			t.Errorf("DeterministicHashCode(%q) = %d, reference %d", s, got, want)
		}
	}
}

func TestDeterministicHashCodeUsesUTF16CodeUnits(t *testing.T) {
	// U+1F600 is one rune but two UTF-16 code units; hashing must see the
	// surrogates, not the rune value.
	got := DeterministicHashCode("😀")
	seed := int32((5381 << 16) + 5381)
	h1 := ((seed << 5) + seed) ^ 0xD83D
	h2 := ((seed << 5) + seed) ^ 0xDE00
	if want := h1 + h2*1566083941; got != want {
		t.Fatalf("got %d, want %d", got, want)
	}
}

func FuzzDeterministicHashCode(f *testing.F) {
	f.Add("scheduled-jobs")
	f.Add("😀x")
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := DeterministicHashCode(s), referenceHash(s); got != want {
			t.Fatalf("DeterministicHashCode(%q) = %d, reference %d", s, got, want)
		}
	})
}

func TestNewNodeID(t *testing.T) {
	seen := map[int32]bool{}
	for range 1000 {
		id := NewNodeID()
		if id == AnyNode {
			t.Fatal("NewNodeID returned AnyNode (0)")
		}
		seen[id] = true
	}
	// 1000 random 32-bit values essentially never collide more than a couple of times.
	if len(seen) < 990 {
		t.Fatalf("only %d distinct ids out of 1000", len(seen))
	}
}

func TestNewNodeIDIsHashOfGUIDString(t *testing.T) {
	// Document the derivation: the hash of a GUID's canonical string.
	g := uuid.MustParse("0F8FAD5B-D9CB-469F-A165-70867728950E")
	if g.String() != "0f8fad5b-d9cb-469f-a165-70867728950e" {
		t.Fatalf("uuid string form %q is not .NET's lower-case D format", g.String())
	}
	if DeterministicHashCode(g.String()) == DeterministicHashCode("0F8FAD5B-D9CB-469F-A165-70867728950E") {
		t.Fatal("hash should be case sensitive")
	}
}
