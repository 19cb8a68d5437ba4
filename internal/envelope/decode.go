package envelope

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Decode reads a single envelope in the binary format (the form stored in
// a database body column), mirroring .NET's EnvelopeSerializer.Deserialize:
//
//   - sentAt: the kind bits are masked off (mask 0x3FFFFFFFFFFFFFFF) and the
//     ticks read as UTC; ticks beyond DateTime.MaxValue are an error.
//   - Known keys fill the typed fields; a repeated known key overwrites the
//     earlier value, as the .NET property setters do. Unknown keys go to
//     Headers in wire order; a repeated unknown key is an error, as .NET's
//     Dictionary.Add throws.
//   - id and conversation-id are parsed like Guid.TryParse and stored in
//     lower-case "D" form; unparsable values are ignored, and the all-zero
//     GUID is stored as "" (absent).
//   - ack-requested is true iff the value equals "true" ignoring case.
//   - accepted-content-types is split on ','.
//   - time-to-send, deliver-by and attempts must parse (see the Envelope
//     field docs); otherwise the error reads "error trying to read data for
//     {key} = '{value}'" like .NET's InvalidOperationException.
//   - Invalid UTF-8 in strings becomes U+FFFD as in .NET's decoder.
//   - Bytes after the data are ignored, as .NET's BinaryReader does.
//
// Every error wraps ErrMalformed. Decode never allocates more than a small
// constant plus the length of b, and the returned envelope shares no
// memory with b.
func Decode(b []byte) (*Envelope, error) {
	r := &reader{b: b}
	raw, err := r.int64("sentAt")
	if err != nil {
		return nil, err
	}
	ticks := raw & ticksMask
	if ticks > maxTicks {
		return nil, r.errorf("sentAt ticks %d exceed DateTime.MaxValue", ticks)
	}
	e := &Envelope{SentAt: ticksToTime(ticks)}

	count, err := r.int32("header count")
	if err != nil {
		return nil, err
	}
	// Each header needs at least two length bytes.
	if count < 0 || int64(count) > int64(r.remaining()/2) {
		return nil, r.errorf("header count %d impossible with %d bytes left", count, r.remaining())
	}
	var seen map[string]struct{}
	for i := int32(0); i < count; i++ {
		key, err := r.string("header key")
		if err != nil {
			return nil, err
		}
		value, err := r.string("header value")
		if err != nil {
			return nil, err
		}
		known, err := e.setKnown(key, value)
		if err != nil {
			return nil, err
		}
		if known {
			continue
		}
		if seen == nil {
			seen = make(map[string]struct{})
		}
		if _, dup := seen[key]; dup {
			return nil, fmt.Errorf("envelope: %w: duplicate header key %q", ErrMalformed, key)
		}
		seen[key] = struct{}{}
		e.Headers = append(e.Headers, Header{Key: key, Value: value})
	}

	n, err := r.int32("data length")
	if err != nil {
		return nil, err
	}
	if n < 0 || int(n) > r.remaining() {
		return nil, r.errorf("data length %d impossible with %d bytes left", n, r.remaining())
	}
	e.Data = make([]byte, n)
	copy(e.Data, r.b[r.off:])
	return e, nil
}

// setKnown applies a known header to its typed field. It reports whether
// key is a known key.
func (e *Envelope) setKnown(key, value string) (bool, error) {
	switch key {
	case KeySource:
		e.Source = value
	case KeyMessageType:
		e.MessageType = value
	case KeyReplyURI:
		e.ReplyURI = value
	case KeyContentType:
		e.ContentType = value
	case KeyCorrelationID:
		e.CorrelationID = value
	case KeyConversationID:
		if g, ok := parseGUID(value); ok {
			e.ConversationID = absentIfEmptyGUID(g)
		}
	case KeyDestination:
		e.Destination = value
	case KeySagaID:
		e.SagaID = value
	case KeyParentID:
		e.ParentID = value
	case KeyAcceptedContentTypes:
		e.AcceptedContentTypes = strings.Split(value, ",")
	case KeyID:
		if g, ok := parseGUID(value); ok {
			e.ID = absentIfEmptyGUID(g)
		}
	case KeyReplyRequested:
		e.ReplyRequested = value
	case KeyAckRequested:
		e.AckRequested = strings.EqualFold(value, "true")
	case KeyTimeToSend:
		t, err := parseDateTime(value)
		if err != nil {
			return true, valueError(key, value, err)
		}
		e.ScheduledTime = &t
	case KeyAttempts:
		n, ok := parseDotNetInt32(value)
		if !ok {
			return true, valueError(key, value, nil)
		}
		e.Attempts = int(n)
	case KeyDeliverBy:
		t, err := parseDateTime(value)
		if err != nil {
			return true, valueError(key, value, err)
		}
		e.DeliverBy = &t
	default:
		return false, nil
	}
	return true, nil
}

func absentIfEmptyGUID(g string) string {
	if g == emptyGUID {
		return ""
	}
	return g
}

func valueError(key, value string, cause error) error {
	if cause != nil {
		return fmt.Errorf("envelope: %w: error trying to read data for %s = '%s': %w", ErrMalformed, key, value, cause)
	}
	return fmt.Errorf("envelope: %w: error trying to read data for %s = '%s'", ErrMalformed, key, value)
}

// reader is a bounds-checked cursor with .NET BinaryReader primitives.
type reader struct {
	b   []byte
	off int
}

func (r *reader) remaining() int { return len(r.b) - r.off }

func (r *reader) errorf(format string, args ...any) error {
	return fmt.Errorf("envelope: %w at offset %d: %s", ErrMalformed, r.off, fmt.Sprintf(format, args...))
}

func (r *reader) truncated(what string, need int) error {
	return r.errorf("truncated reading %s: need %d bytes, have %d", what, need, r.remaining())
}

// take returns the next n bytes, or a truncation error naming what was being read.
func (r *reader) take(what string, n int) ([]byte, error) {
	if r.remaining() < n {
		return nil, r.truncated(what, n)
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b, nil
}

func (r *reader) int64(what string) (int64, error) {
	b, err := r.take(what, 8)
	if err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(b)), nil
}

func (r *reader) int32(what string) (int32, error) {
	b, err := r.take(what, 4)
	if err != nil {
		return 0, err
	}
	return int32(binary.LittleEndian.Uint32(b)), nil
}

// read7BitEncodedInt mirrors BinaryReader.Read7BitEncodedInt: at most five
// bytes, the fifth contributing only its low four bits; the result is an
// int32 and may be negative. Non-minimal encodings are accepted.
func (r *reader) read7BitEncodedInt(what string) (int32, error) {
	var v uint32
	for shift := 0; shift < 35; shift += 7 {
		b, err := r.take(what, 1)
		if err != nil {
			return 0, err
		}
		c := b[0]
		if shift == 28 && c > 0x0F {
			return 0, r.errorf("too many bytes in 7-bit encoded %s", what)
		}
		v |= uint32(c&0x7F) << shift
		if c < 0x80 {
			return int32(v), nil
		}
	}
	return 0, r.errorf("too many bytes in 7-bit encoded %s", what) // not reached
}

// string mirrors BinaryReader.ReadString.
func (r *reader) string(what string) (string, error) {
	n, err := r.read7BitEncodedInt(what + " length")
	if err != nil {
		return "", err
	}
	if n < 0 || int(n) > r.remaining() {
		return "", r.errorf("%s length %d impossible with %d bytes left", what, n, r.remaining())
	}
	s := decodeUTF8(r.b[r.off : r.off+int(n)])
	r.off += int(n)
	return s, nil
}
