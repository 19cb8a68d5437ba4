package row

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// The table-less outbox (docs/relay-sources.md) carries an outgoing envelope as the content of
// a PostgreSQL logical decoding message instead of a row. The content is the envelope's
// OutgoingColumns, as OutgoingArgs binds them, in a small self-describing layout, read back
// through SetColumn: the same mapping of columns to envelope fields as a row's.
//
//	byte     version (1)
//	uvarint  number of columns
//	per column: uvarint name length, name, tag byte, value
//	  tag 0 NULL; 1 text (uvarint length, bytes); 2 integer (varint);
//	  3 bytes (uvarint length, bytes); 4 boolean (one byte);
//	  5 time (varint Unix seconds, uvarint nanoseconds, UTC: any year, unlike UnixNano)
const emittedVersion = 1

const (
	tagNull byte = iota
	tagText
	tagInt
	tagBytes
	tagBool
	tagTime
)

// ErrMalformedEmitted is wrapped by DecodeEmitted's errors about the content itself.
var ErrMalformedEmitted = errors.New("malformed emitted envelope")

// textUUIDs binds UUIDs as text, as the emitted layout stores them.
type textUUIDs struct{}

func (textUUIDs) Arg(u uuid.UUID) any   { return u.String() }
func (textUUIDs) Dest(u *uuid.UUID) any { return u }

// EncodeEmitted appends the content of the logical decoding message that carries the
// outgoing envelope e to b.
func (e *Envelope) EncodeEmitted(b []byte) ([]byte, error) {
	args := e.OutgoingArgs(make([]any, 0, len(OutgoingColumns)), textUUIDs{})
	b = append(b, emittedVersion)
	b = binary.AppendUvarint(b, uint64(len(OutgoingColumns)))
	for i, name := range OutgoingColumns {
		b = appendText(b, name)
		switch v := args[i].(type) {
		case nil:
			b = append(b, tagNull)
		case string:
			b = appendText(append(b, tagText), v)
		case int32:
			b = binary.AppendVarint(append(b, tagInt), int64(v))
		case int:
			b = binary.AppendVarint(append(b, tagInt), int64(v))
		case []byte:
			b = binary.AppendUvarint(append(b, tagBytes), uint64(len(v)))
			b = append(b, v...)
		case bool:
			t := byte(0)
			if v {
				t = 1
			}
			b = append(b, tagBool, t)
		case time.Time:
			b = binary.AppendVarint(append(b, tagTime), v.Unix())
			b = binary.AppendUvarint(b, uint64(v.Nanosecond()))
		default:
			return nil, fmt.Errorf("encode emitted envelope: column %s holds a %T", name, v)
		}
	}
	return b, nil
}

func appendText(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// DecodeEmitted reads an outgoing envelope from the content of a logical decoding message
// written by EncodeEmitted. Columns it does not know are skipped (a later version may add
// some); an error wraps ErrMalformedEmitted, or names the column whose value does not fit.
func DecodeEmitted(b []byte) (Envelope, error) {
	var e Envelope
	d := emittedReader{b: b}
	if v := d.byte(); d.err == nil && v != emittedVersion {
		return e, fmt.Errorf("%w: version %d (this build reads %d)", ErrMalformedEmitted, v, emittedVersion)
	}
	n := d.uvarint()
	for i := uint64(0); i < n && d.err == nil; i++ {
		name := string(d.bytes())
		var v any
		switch tag := d.byte(); tag {
		case tagNull:
		case tagText:
			v = string(d.bytes())
		case tagInt:
			v = d.varint()
		case tagBytes:
			v = append([]byte{}, d.bytes()...)
		case tagBool:
			v = d.byte() != 0
		case tagTime:
			sec := d.varint()
			nsec := d.uvarint()
			if nsec >= 1e9 && d.err == nil {
				d.err = fmt.Errorf("%w: column %q: %d nanoseconds", ErrMalformedEmitted, name, nsec)
			}
			v = time.Unix(sec, int64(nsec)).UTC()
		default:
			if d.err == nil {
				d.err = fmt.Errorf("%w: unknown tag %d of column %q", ErrMalformedEmitted, tag, name)
			}
		}
		if d.err != nil {
			break
		}
		if _, err := e.SetColumn(name, v); err != nil {
			return e, fmt.Errorf("emitted envelope: column %q: %w", name, err)
		}
	}
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%w: %d bytes after the last column", ErrMalformedEmitted, len(d.b))
	}
	if d.err != nil {
		return e, d.err
	}
	if e.Body == nil {
		e.Body = []byte{}
	}
	return e, nil
}

// emittedReader reads the emitted layout; the first error sticks.
type emittedReader struct {
	b   []byte
	err error
}

func (r *emittedReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: truncated %s", ErrMalformedEmitted, what)
	}
	r.b = nil
}

func (r *emittedReader) byte() byte {
	if len(r.b) < 1 {
		r.fail("byte")
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *emittedReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	return r.took(v, n, "length")
}

func (r *emittedReader) varint() int64 {
	v, n := binary.Varint(r.b)
	return int64(r.took(uint64(v), n, "integer"))
}

// took consumes the n bytes a varint of value v was read from (n <= 0: truncated or
// overflowing) and returns v, or 0 after an error.
func (r *emittedReader) took(v uint64, n int, what string) uint64 {
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *emittedReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.fail("value")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}
