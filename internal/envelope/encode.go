package envelope

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Encode writes e in the single-envelope binary form, byte for byte as
// Jasper's (J2) EnvelopeSerializer.Serialize(Envelope) does: sentAt as
// SentAt.UtcDateTime.ToBinary() (ticks | 0x4000000000000000), the header
// count, the present known headers in the documented order followed by
// e.Headers, then the data length and data.
//
// Times are converted to UTC and truncated to 100 ns. ID and
// ConversationID may be given in any format .NET's Guid.TryParse accepts
// (see Decode) and are written in lower-case "D" form; the all-zero GUID
// counts as absent.
//
// Encode fails, with an error wrapping ErrInvalid, when e cannot be written
// so that Decode (or Jasper) reads it back unchanged: a time outside .NET's
// DateTime range (years 1–9999), an ID/ConversationID that is not a GUID,
// an AcceptedContentTypes element containing ',', Attempts outside int32,
// a Headers key that is a known key (see the Key constants) or repeated,
// a string that is not valid UTF-8, or Data longer than an int32 allows.
func Encode(e *Envelope) ([]byte, error) {
	if e == nil {
		return nil, fmt.Errorf("envelope: %w: nil envelope", ErrInvalid)
	}
	w := writer{buf: make([]byte, 0, 64+len(e.Data))}

	sentTicks, ok := timeToTicks(e.SentAt)
	if !ok {
		return nil, invalidf("SentAt %v outside .NET DateTime range", e.SentAt)
	}
	w.int64(sentTicks | kindUTC)

	countAt := len(w.buf)
	w.int32(0) // patched below
	var count int32
	put := func(key, value string) {
		w.string(key)
		w.string(value)
		count++
	}
	putIf := func(key, value string) {
		if value != "" {
			put(key, value)
		}
	}

	putIf(KeySource, e.Source)
	putIf(KeyMessageType, e.MessageType)
	putIf(KeyReplyURI, e.ReplyURI)
	putIf(KeyContentType, e.ContentType)
	putIf(KeyCorrelationID, e.CorrelationID)
	conv, err := guidForWrite("ConversationID", e.ConversationID)
	if err != nil {
		return nil, err
	}
	putIf(KeyConversationID, conv)
	putIf(KeyDestination, e.Destination)
	putIf(KeySagaID, e.SagaID)
	putIf(KeyParentID, e.ParentID)
	if len(e.AcceptedContentTypes) > 0 {
		for _, ct := range e.AcceptedContentTypes {
			if strings.Contains(ct, ",") {
				return nil, invalidf("AcceptedContentTypes element %q contains ','", ct)
			}
		}
		put(KeyAcceptedContentTypes, strings.Join(e.AcceptedContentTypes, ","))
	}
	id, err := guidForWrite("ID", e.ID)
	if err != nil {
		return nil, err
	}
	putIf(KeyID, id)
	putIf(KeyReplyRequested, e.ReplyRequested)
	if e.AckRequested {
		put(KeyAckRequested, "True")
	}
	if e.ScheduledTime != nil {
		if _, ok := timeToTicks(*e.ScheduledTime); !ok {
			return nil, invalidf("ScheduledTime %v outside .NET DateTime range", *e.ScheduledTime)
		}
		put(KeyTimeToSend, formatTimeToSend(*e.ScheduledTime))
	}
	if e.Attempts < math.MinInt32 || e.Attempts > math.MaxInt32 {
		return nil, invalidf("Attempts %d outside int32 range", e.Attempts)
	}
	if e.Attempts != 0 {
		put(KeyAttempts, strconv.Itoa(e.Attempts))
	}
	if e.DeliverBy != nil {
		if _, ok := timeToTicks(*e.DeliverBy); !ok {
			return nil, invalidf("DeliverBy %v outside .NET DateTime range", *e.DeliverBy)
		}
		put(KeyDeliverBy, formatDeliverBy(*e.DeliverBy))
	}

	seen := make(map[string]struct{}, len(e.Headers))
	for _, h := range e.Headers {
		if isKnownKey(h.Key) {
			return nil, invalidf("Headers key %q is reserved for a typed field", h.Key)
		}
		if _, dup := seen[h.Key]; dup {
			return nil, invalidf("Headers key %q repeated", h.Key)
		}
		seen[h.Key] = struct{}{}
		put(h.Key, h.Value)
	}
	if w.err != nil {
		return nil, w.err
	}
	binary.LittleEndian.PutUint32(w.buf[countAt:], uint32(count))

	if len(e.Data) > math.MaxInt32 {
		return nil, invalidf("Data length %d exceeds int32", len(e.Data))
	}
	w.int32(int32(len(e.Data)))
	w.buf = append(w.buf, e.Data...)
	return w.buf, nil
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("envelope: %w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// guidForWrite canonicalises a GUID field; "" and the empty GUID yield "".
func guidForWrite(field, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	g, ok := parseGUID(s)
	if !ok {
		return "", invalidf("%s %q is not a GUID", field, s)
	}
	return absentIfEmptyGUID(g), nil
}

func isKnownKey(k string) bool {
	switch k {
	case KeySource, KeyMessageType, KeyReplyURI, KeyContentType, KeyCorrelationID,
		KeyConversationID, KeyDestination, KeySagaID, KeyParentID, KeyAcceptedContentTypes,
		KeyID, KeyReplyRequested, KeyAckRequested, KeyTimeToSend, KeyAttempts, KeyDeliverBy:
		return true
	}
	return false
}

// writer appends .NET BinaryWriter primitives; the first invalid string
// sets err and later writes are ignored.
type writer struct {
	buf []byte
	err error
}

func (w *writer) int64(v int64) { w.buf = binary.LittleEndian.AppendUint64(w.buf, uint64(v)) }

func (w *writer) int32(v int32) { w.buf = binary.LittleEndian.AppendUint32(w.buf, uint32(v)) }

// string mirrors BinaryWriter.Write(string): 7-bit encoded byte length,
// then UTF-8.
func (w *writer) string(s string) {
	if w.err != nil {
		return
	}
	if !utf8.ValidString(s) {
		w.err = invalidf("string %q is not valid UTF-8", s)
		return
	}
	if len(s) > math.MaxInt32 {
		w.err = invalidf("string of %d bytes exceeds int32 length", len(s))
		return
	}
	w.buf = binary.AppendUvarint(w.buf, uint64(len(s)))
	w.buf = append(w.buf, s...)
}
