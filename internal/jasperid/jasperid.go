// Package jasperid ports the identifier helpers that Jasper (the .NET
// messaging framework whose durable inbox/outbox tables this module shares)
// uses for node ids and advisory-lock ids.
//
// Jasper derives every lock id and every node id from
// GetDeterministicHashCode (src/Jasper/Util/StringExtensions.cs), a djb2
// variant over the UTF-16 code units of a string that, unlike
// string.GetHashCode, is stable across processes. See
// docs/durability.md (owner ids and lock ids).
package jasperid

import (
	"unicode/utf16"

	"github.com/google/uuid"
)

// Jasper's well-known advisory-lock ids (src/Jasper/Transports/TransportConstants.cs).
// Each is DeterministicHashCode of the string given in its comment.
// PostgreSQL receives them sign-extended as bigint advisory keys
// (int64(id)); SQL Server receives their decimal string as the
// sp_getapplock resource name.
const (
	// ScheduledJobLockID guards the "run scheduled jobs" action ("scheduled-jobs").
	ScheduledJobLockID int32 = -1167534268
	// IncomingMessageLockID guards incoming-envelope recovery ("recover-incoming-messages").
	IncomingMessageLockID int32 = -154922800
	// OutgoingMessageLockID guards outgoing-envelope recovery ("recover-outgoing-messages").
	OutgoingMessageLockID int32 = -766716598
	// ReassignmentLockID guards dormant-node reassignment ("jasper-reassign-envelopes").
	ReassignmentLockID int32 = -189172006
)

// AnyNode is the owner id meaning "not owned by any node"
// (TransportConstants.AnyNode). NewNodeID never returns it.
const AnyNode int32 = 0

// DeterministicHashCode returns Jasper's GetDeterministicHashCode of s.
//
// The .NET algorithm runs two djb2-style accumulators over the UTF-16 code
// units of the string, alternating between them, and combines them with
// unchecked 32-bit arithmetic:
//
//	h1 = h2 = (5381 << 16) + 5381
//	for i := 0; i < len; i += 2 {
//	    h1 = ((h1 << 5) + h1) ^ s[i]
//	    if i == len-1 { break }
//	    h2 = ((h2 << 5) + h2) ^ s[i+1]
//	}
//	return h1 + h2*1566083941
//
// s is interpreted as UTF-8; runes outside the BMP become surrogate pairs
// exactly as in a .NET string, and invalid UTF-8 bytes become U+FFFD.
func DeterministicHashCode(s string) int32 {
	units := utf16.Encode([]rune(s))
	h1 := int32((5381 << 16) + 5381)
	h2 := h1
	for i := 0; i < len(units); i += 2 {
		h1 = ((h1 << 5) + h1) ^ int32(units[i])
		if i == len(units)-1 {
			break
		}
		h2 = ((h2 << 5) + h2) ^ int32(units[i+1])
	}
	return h1 + h2*1566083941
}

// NewNodeID returns a fresh node id the way Jasper's AdvancedSettings does:
// the DeterministicHashCode of the lower-case, hyphenated string form of a
// new random GUID (Guid.NewGuid().ToString()). The result may be negative.
// It is never AnyNode (0), which would mean "unowned"; a zero hash is
// retried with another GUID.
func NewNodeID() int32 {
	for {
		if id := DeterministicHashCode(uuid.NewString()); id != AnyNode {
			return id
		}
	}
}
