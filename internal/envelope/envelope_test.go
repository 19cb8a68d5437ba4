package envelope

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func timePtr(t time.Time) *time.Time { return &t }

// rawHeader and rawEnvelope build wire bytes independently of Encode, from
// an explicit header list, so golden tests do not trust the writer.
type rawHeader struct{ k, v string }

func rawEnvelope(binaryDate int64, headers []rawHeader, data []byte) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint64(b, uint64(binaryDate))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(headers)))
	for _, h := range headers {
		for _, s := range []string{h.k, h.v} {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// rawHeaders parses only the header list of an encoded envelope.
func rawHeaders(t *testing.T, b []byte) []rawHeader {
	t.Helper()
	r := &reader{b: b}
	if _, err := r.int64("sentAt"); err != nil {
		t.Fatal(err)
	}
	n, err := r.int32("count")
	if err != nil {
		t.Fatal(err)
	}
	var hs []rawHeader
	for range n {
		k, err1 := r.string("k")
		v, err2 := r.string("v")
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		hs = append(hs, rawHeader{k, v})
	}
	return hs
}

// diffEnvelopes reports the first difference between two envelopes, ""
// when equal. Times compare as instants (both sides are expected to be at
// 100 ns precision already); nil and empty slices are equal.
func diffEnvelopes(a, b *Envelope) string {
	timeEq := func(x, y *time.Time) bool {
		if x == nil || y == nil {
			return x == nil && y == nil
		}
		return x.Equal(*y)
	}
	switch {
	case !a.SentAt.Equal(b.SentAt):
		return fmt.Sprintf("SentAt %v != %v", a.SentAt, b.SentAt)
	case a.Source != b.Source:
		return fmt.Sprintf("Source %q != %q", a.Source, b.Source)
	case a.MessageType != b.MessageType:
		return fmt.Sprintf("MessageType %q != %q", a.MessageType, b.MessageType)
	case a.ReplyURI != b.ReplyURI:
		return fmt.Sprintf("ReplyURI %q != %q", a.ReplyURI, b.ReplyURI)
	case a.ContentType != b.ContentType:
		return fmt.Sprintf("ContentType %q != %q", a.ContentType, b.ContentType)
	case a.CorrelationID != b.CorrelationID:
		return fmt.Sprintf("CorrelationID %q != %q", a.CorrelationID, b.CorrelationID)
	case a.ConversationID != b.ConversationID:
		return fmt.Sprintf("ConversationID %q != %q", a.ConversationID, b.ConversationID)
	case a.Destination != b.Destination:
		return fmt.Sprintf("Destination %q != %q", a.Destination, b.Destination)
	case a.SagaID != b.SagaID:
		return fmt.Sprintf("SagaID %q != %q", a.SagaID, b.SagaID)
	case a.ParentID != b.ParentID:
		return fmt.Sprintf("ParentID %q != %q", a.ParentID, b.ParentID)
	case !slices.Equal(a.AcceptedContentTypes, b.AcceptedContentTypes):
		return fmt.Sprintf("AcceptedContentTypes %q != %q", a.AcceptedContentTypes, b.AcceptedContentTypes)
	case a.ID != b.ID:
		return fmt.Sprintf("ID %q != %q", a.ID, b.ID)
	case a.ReplyRequested != b.ReplyRequested:
		return fmt.Sprintf("ReplyRequested %q != %q", a.ReplyRequested, b.ReplyRequested)
	case a.AckRequested != b.AckRequested:
		return fmt.Sprintf("AckRequested %v != %v", a.AckRequested, b.AckRequested)
	case !timeEq(a.ScheduledTime, b.ScheduledTime):
		return fmt.Sprintf("ScheduledTime %v != %v", a.ScheduledTime, b.ScheduledTime)
	case a.Attempts != b.Attempts:
		return fmt.Sprintf("Attempts %d != %d", a.Attempts, b.Attempts)
	case !timeEq(a.DeliverBy, b.DeliverBy):
		return fmt.Sprintf("DeliverBy %v != %v", a.DeliverBy, b.DeliverBy)
	case !slices.Equal(a.Headers, b.Headers):
		return fmt.Sprintf("Headers %q != %q", a.Headers, b.Headers)
	case !bytes.Equal(a.Data, b.Data):
		return fmt.Sprintf("Data %q != %q", a.Data, b.Data)
	}
	return ""
}

func exampleEnvelope() *Envelope {
	return &Envelope{
		SentAt:      time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC),
		MessageType: "Ping",
		ContentType: "application/json",
		ID:          "0f8fad5b-d9cb-469f-a165-70867728950e",
		Data:        []byte("{}"),
	}
}

func fullEnvelope() *Envelope {
	return &Envelope{
		SentAt:               time.Date(2023, 5, 6, 7, 8, 9, 123456700, time.UTC),
		Source:               "billing-service",
		MessageType:          "invoice-created",
		ReplyURI:             "tcp://localhost:2201/",
		ContentType:          "application/json",
		CorrelationID:        "corr-42",
		ConversationID:       "11111111-2222-3333-4444-555555555555",
		Destination:          "rabbitmq://queue/invoices",
		SagaID:               "saga-7",
		ParentID:             "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		AcceptedContentTypes: []string{"application/json", "text/plain"},
		ID:                   "0f8fad5b-d9cb-469f-a165-70867728950e",
		ReplyRequested:       "invoice-ack",
		AckRequested:         true,
		ScheduledTime:        timePtr(time.Date(2023, 5, 6, 8, 0, 0, 500, time.UTC)),
		Attempts:             3,
		DeliverBy:            timePtr(time.Date(2023, 5, 7, 0, 0, 0, 1234500, time.UTC)),
		Headers: []Header{
			{KeySentAttempts, "2"},
			{KeyReceivedAt, "tcp://localhost:2202/"},
			{"tenant", "ÆØÅ 😀"},
		},
		Data: []byte(`{"amount":10}`),
	}
}

func TestEncodeWorkedExample(t *testing.T) {
	got, err := Encode(exampleEnvelope())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hex.DecodeString(strings.Join([]string{
		"004073a7b9ccd948", // sentAt, UTC kind
		"03000000",         // header count
		"0c", hex.EncodeToString([]byte("message-type")), "04", hex.EncodeToString([]byte("Ping")),
		"0c", hex.EncodeToString([]byte("content-type")), "10", hex.EncodeToString([]byte("application/json")),
		"02", hex.EncodeToString([]byte("id")), "24", hex.EncodeToString([]byte("0f8fad5b-d9cb-469f-a165-70867728950e")),
		"02000000", "7b7d",
	}, ""))
	if len(want) != 106 {
		t.Fatalf("test bug: want is %d bytes", len(want))
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Encode:\n got %x\nwant %x", got, want)
	}
	if !bytes.HasPrefix(got, []byte{0x00, 0x40, 0x73, 0xa7, 0xb9, 0xcc, 0xd9, 0x48}) {
		t.Fatalf("sentAt bytes %x", got[:8])
	}

	dec, err := Decode(want)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffEnvelopes(dec, exampleEnvelope()); d != "" {
		t.Fatal(d)
	}
}

func TestEncodeFullEnvelopeOrderAndValues(t *testing.T) {
	e := fullEnvelope()
	got, err := Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	wantHeaders := []rawHeader{
		{"source", "billing-service"},
		{"message-type", "invoice-created"},
		{"reply-uri", "tcp://localhost:2201/"},
		{"content-type", "application/json"},
		{"correlation-id", "corr-42"},
		{"conversation-id", "11111111-2222-3333-4444-555555555555"},
		{"destination", "rabbitmq://queue/invoices"},
		{"saga-id", "saga-7"},
		{"parent-id", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{"accepted-content-types", "application/json,text/plain"},
		{"id", "0f8fad5b-d9cb-469f-a165-70867728950e"},
		{"reply-requested", "invoice-ack"},
		{"ack-requested", "True"},
		{"time-to-send", "2023-05-06T08:00:00.0000005"},
		{"attempts", "3"},
		{"deliver-by", "2023-05-07T00:00:00.0012345+00:00"},
		{"sent-attempts", "2"},
		{"received-at", "tcp://localhost:2202/"},
		{"tenant", "ÆØÅ 😀"},
	}
	if hs := rawHeaders(t, got); !slices.Equal(hs, wantHeaders) {
		t.Fatalf("headers:\n got %q\nwant %q", hs, wantHeaders)
	}
	sent, _ := timeToTicks(e.SentAt)
	want := rawEnvelope(sent|kindUTC, wantHeaders, e.Data)
	if !bytes.Equal(got, want) {
		t.Fatalf("Encode:\n got %x\nwant %x", got, want)
	}

	dec, err := Decode(got)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffEnvelopes(dec, e); d != "" {
		t.Fatal(d)
	}
}

func TestEncodeSkipsAbsentFields(t *testing.T) {
	got, err := Encode(&Envelope{
		ID:             emptyGUID, // Guid.Empty is not written
		ConversationID: "",
		Attempts:       0,
	})
	if err != nil {
		t.Fatal(err)
	}
	// DateTime.MinValue (ticks 0), UTC kind; no headers; empty data.
	want := rawEnvelope(kindUTC, nil, nil)
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x want %x", got, want)
	}
}

func TestValueEncodings(t *testing.T) {
	cases := []struct {
		name string
		e    Envelope
		key  string
		want string
	}{
		{"ack True", Envelope{AckRequested: true}, KeyAckRequested, "True"},
		{"attempts decimal", Envelope{Attempts: 12345}, KeyAttempts, "12345"},
		{"attempts max", Envelope{Attempts: math.MaxInt32}, KeyAttempts, "2147483647"},
		{"id upper-case normalised", Envelope{ID: "0F8FAD5B-D9CB-469F-A165-70867728950E"}, KeyID, "0f8fad5b-d9cb-469f-a165-70867728950e"},
		{"id N form normalised", Envelope{ID: "0f8fad5bd9cb469fa16570867728950e"}, KeyID, "0f8fad5b-d9cb-469f-a165-70867728950e"},
		{"conversation braces", Envelope{ConversationID: "{0f8fad5b-d9cb-469f-a165-70867728950e}"}, KeyConversationID, "0f8fad5b-d9cb-469f-a165-70867728950e"},
		{"accepted single", Envelope{AcceptedContentTypes: []string{"application/json"}}, KeyAcceptedContentTypes, "application/json"},
		{"accepted empty element", Envelope{AcceptedContentTypes: []string{""}}, KeyAcceptedContentTypes, ""},
		{"time-to-send UTC no zone", Envelope{ScheduledTime: timePtr(time.Date(2022, 3, 4, 5, 6, 7, 0, time.UTC))}, KeyTimeToSend, "2022-03-04T05:06:07.0000000"},
		{"time-to-send converted to UTC", Envelope{ScheduledTime: timePtr(time.Date(2022, 3, 4, 5, 6, 7, 0, time.FixedZone("x", 2*3600)))}, KeyTimeToSend, "2022-03-04T03:06:07.0000000"},
		{"time-to-send truncated to ticks", Envelope{ScheduledTime: timePtr(time.Date(2022, 3, 4, 5, 6, 7, 999_999_999, time.UTC))}, KeyTimeToSend, "2022-03-04T05:06:07.9999999"},
		{"time-to-send year 1", Envelope{ScheduledTime: timePtr(time.Date(1, 1, 1, 0, 0, 0, 100, time.UTC))}, KeyTimeToSend, "0001-01-01T00:00:00.0000001"},
		{"deliver-by o format", Envelope{DeliverBy: timePtr(time.Date(2022, 12, 31, 23, 59, 59, 100, time.UTC))}, KeyDeliverBy, "2022-12-31T23:59:59.0000001+00:00"},
		{"deliver-by converted to UTC", Envelope{DeliverBy: timePtr(time.Date(2022, 1, 1, 0, 30, 0, 0, time.FixedZone("x", -3600)))}, KeyDeliverBy, "2022-01-01T01:30:00.0000000+00:00"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := Encode(&c.e)
			if err != nil {
				t.Fatal(err)
			}
			hs := rawHeaders(t, b)
			if len(hs) != 1 || hs[0].k != c.key || hs[0].v != c.want {
				t.Fatalf("headers %q, want [{%s %s}]", hs, c.key, c.want)
			}
		})
	}
}

func TestEncodeNegativeAttemptsRoundTrips(t *testing.T) {
	b, err := Encode(&Envelope{Attempts: -2})
	if err != nil {
		t.Fatal(err)
	}
	e, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Attempts != -2 {
		t.Fatalf("Attempts = %d", e.Attempts)
	}
}

func TestSentAtEncoding(t *testing.T) {
	cases := []struct {
		t    time.Time
		want int64
	}{
		{time.Time{}, kindUTC}, // DateTime.MinValue
		{time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC), 637765920000000000 | kindUTC},
		{time.Unix(0, 0), 621355968000000000 | kindUTC},
		{time.Unix(0, 150), 621355968000000001 | kindUTC}, // truncated to 100 ns
		{time.Date(2022, 1, 1, 1, 0, 0, 0, time.FixedZone("x", 3600)), 637765920000000000 | kindUTC},
		{time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC), maxTicks | kindUTC},
	}
	for _, c := range cases {
		b, err := Encode(&Envelope{SentAt: c.t})
		if err != nil {
			t.Fatal(err)
		}
		if got := int64(binary.LittleEndian.Uint64(b)); got != c.want {
			t.Errorf("SentAt %v: got %#x want %#x", c.t, got, c.want)
		}
		e, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if want := c.t.Truncate(100); !e.SentAt.Equal(want) || e.SentAt.Location() != time.UTC {
			t.Errorf("decoded SentAt %v, want %v UTC", e.SentAt, want)
		}
	}
}

func TestDecodeSentAtKinds(t *testing.T) {
	const ticks = 637765920000000000
	want := time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC)
	for kind := int64(0); kind < 4; kind++ {
		e, err := Decode(rawEnvelope(kind<<62|ticks, nil, nil))
		if err != nil {
			t.Fatalf("kind %d: %v", kind, err)
		}
		if !e.SentAt.Equal(want) {
			t.Errorf("kind %d: %v", kind, e.SentAt)
		}
	}
	// Ticks beyond DateTime.MaxValue cannot come from .NET.
	if _, err := Decode(rawEnvelope(kindUTC|(maxTicks+1), nil, nil)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("ticks > max: %v", err)
	}
}

func TestDecodeTolerance(t *testing.T) {
	const id = "0f8fad5b-d9cb-469f-a165-70867728950e"
	cases := []struct {
		name  string
		h     []rawHeader
		check func(*Envelope) string
	}{
		{"ack TRUE", []rawHeader{{"ack-requested", "TRUE"}}, func(e *Envelope) string { return ok(e.AckRequested) }},
		{"ack true", []rawHeader{{"ack-requested", "true"}}, func(e *Envelope) string { return ok(e.AckRequested) }},
		{"ack yes", []rawHeader{{"ack-requested", "yes"}}, func(e *Envelope) string { return ok(!e.AckRequested) }},
		{"ack padded", []rawHeader{{"ack-requested", " true"}}, func(e *Envelope) string { return ok(!e.AckRequested) }},
		{"id bad ignored", []rawHeader{{"id", "not-a-guid"}}, func(e *Envelope) string { return eq(e.ID, "") }},
		{"id bad keeps earlier", []rawHeader{{"id", id}, {"id", "zzz"}}, func(e *Envelope) string { return eq(e.ID, id) }},
		{"id empty guid absent", []rawHeader{{"id", id}, {"id", emptyGUID}}, func(e *Envelope) string { return eq(e.ID, "") }},
		{"id upper", []rawHeader{{"id", strings.ToUpper(id)}}, func(e *Envelope) string { return eq(e.ID, id) }},
		{"id N", []rawHeader{{"id", strings.ReplaceAll(id, "-", "")}}, func(e *Envelope) string { return eq(e.ID, id) }},
		{"id P spaced", []rawHeader{{"id", " (" + id + ") "}}, func(e *Envelope) string { return eq(e.ID, id) }},
		{"conversation bad", []rawHeader{{"conversation-id", "{x}"}}, func(e *Envelope) string { return eq(e.ConversationID, "") }},
		{"conversation B", []rawHeader{{"conversation-id", "{" + id + "}"}}, func(e *Envelope) string { return eq(e.ConversationID, id) }},
		{"correlation raw", []rawHeader{{"correlation-id", "Not A Guid"}}, func(e *Envelope) string { return eq(e.CorrelationID, "Not A Guid") }},
		{"parent raw (J1 guid)", []rawHeader{{"parent-id", id}}, func(e *Envelope) string { return eq(e.ParentID, id) }},
		{"accepted split", []rawHeader{{"accepted-content-types", "a,,b"}}, func(e *Envelope) string {
			return ok(slices.Equal(e.AcceptedContentTypes, []string{"a", "", "b"}))
		}},
		{"attempts signs and space", []rawHeader{{"attempts", " +7 \t"}}, func(e *Envelope) string { return ok(e.Attempts == 7) }},
		{"attempts negative", []rawHeader{{"attempts", "-3"}}, func(e *Envelope) string { return ok(e.Attempts == -3) }},
		{"attempts min int32", []rawHeader{{"attempts", "-2147483648"}}, func(e *Envelope) string { return ok(e.Attempts == math.MinInt32) }},
		{"attempts trailing NUL", []rawHeader{{"attempts", "5\x00\x00"}}, func(e *Envelope) string { return ok(e.Attempts == 5) }},
		{"last known value wins", []rawHeader{{"source", "a"}, {"source", "b"}}, func(e *Envelope) string { return eq(e.Source, "b") }},
		{"time-to-send 7 digits", []rawHeader{{"time-to-send", "2022-03-04T05:06:07.1234567"}}, func(e *Envelope) string {
			return timeIs(e.ScheduledTime, time.Date(2022, 3, 4, 5, 6, 7, 123456700, time.UTC))
		}},
		{"time-to-send Z", []rawHeader{{"time-to-send", "2022-03-04T05:06:07.1234567Z"}}, func(e *Envelope) string {
			return timeIs(e.ScheduledTime, time.Date(2022, 3, 4, 5, 6, 7, 123456700, time.UTC))
		}},
		{"time-to-send offset", []rawHeader{{"time-to-send", "2022-03-04T05:06:07+02:00"}}, func(e *Envelope) string {
			return timeIs(e.ScheduledTime, time.Date(2022, 3, 4, 3, 6, 7, 0, time.UTC))
		}},
		{"time-to-send short fraction", []rawHeader{{"time-to-send", "2022-03-04T05:06:07.5"}}, func(e *Envelope) string {
			return timeIs(e.ScheduledTime, time.Date(2022, 3, 4, 5, 6, 7, 500_000_000, time.UTC))
		}},
		{"deliver-by o", []rawHeader{{"deliver-by", "2022-03-04T05:06:07.0000001+00:00"}}, func(e *Envelope) string {
			return timeIs(e.DeliverBy, time.Date(2022, 3, 4, 5, 6, 7, 100, time.UTC))
		}},
		{"deliver-by negative offset", []rawHeader{{"deliver-by", "2022-03-04T23:30:00.0000000-05:00"}}, func(e *Envelope) string {
			return timeIs(e.DeliverBy, time.Date(2022, 3, 5, 4, 30, 0, 0, time.UTC))
		}},
		{"J1 keys to Headers", []rawHeader{{"sent-attempts", "1"}, {"received-at", "tcp://x:1/"}, {"Source", "case"}}, func(e *Envelope) string {
			return ok(slices.Equal(e.Headers, []Header{{"sent-attempts", "1"}, {"received-at", "tcp://x:1/"}, {"Source", "case"}}) && e.Source == "")
		}},
		{"invalid utf8 replaced", []rawHeader{{"k", "a\xe2\x82b\xffc"}}, func(e *Envelope) string {
			return ok(slices.Equal(e.Headers, []Header{{"k", "a\uFFFDb\uFFFDc"}}))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := Decode(rawEnvelope(kindUTC, c.h, []byte("x")))
			if err != nil {
				t.Fatal(err)
			}
			if msg := c.check(e); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

func ok(b bool) string {
	if b {
		return ""
	}
	return "check failed"
}

func eq(got, want string) string {
	if got == want {
		return ""
	}
	return fmt.Sprintf("got %q want %q", got, want)
}

func timeIs(got *time.Time, want time.Time) string {
	if got == nil || !got.Equal(want) || got.Location() != time.UTC {
		return fmt.Sprintf("got %v want %v (UTC)", got, want)
	}
	return ""
}

func TestDecodeIgnoresTrailingBytesAndAcceptsNonMinimalLengths(t *testing.T) {
	b := append(rawEnvelope(kindUTC, []rawHeader{{"source", "s"}}, []byte("d")), 0xde, 0xad)
	e, err := Decode(b)
	if err != nil || e.Source != "s" || string(e.Data) != "d" {
		t.Fatalf("%v %+v", err, e)
	}
	// "source" with its length 6 written as the non-minimal 0x86 0x00.
	var nm []byte
	nm = binary.LittleEndian.AppendUint64(nm, uint64(kindUTC))
	nm = binary.LittleEndian.AppendUint32(nm, 1)
	nm = append(nm, 0x86, 0x00)
	nm = append(nm, "source"...)
	nm = append(nm, 0x81, 0x80, 0x80, 0x80, 0x00, 'v')
	nm = binary.LittleEndian.AppendUint32(nm, 0)
	if e, err := Decode(nm); err != nil || e.Source != "v" {
		t.Fatalf("non-minimal: %v %+v", err, e)
	}
}

func TestDecodeDataIsCopied(t *testing.T) {
	b := rawEnvelope(kindUTC, nil, []byte("abc"))
	e, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] = 'X'
	if string(e.Data) != "abc" {
		t.Fatal("Data aliases the input")
	}
}

func TestDecodeMalformed(t *testing.T) {
	le32 := func(v int32) []byte { return binary.LittleEndian.AppendUint32(nil, uint32(v)) }
	sent := binary.LittleEndian.AppendUint64(nil, uint64(kindUTC))
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases := []struct {
		name    string
		b       []byte
		message string
	}{
		{"empty", nil, "truncated"},
		{"short sentAt", []byte{1, 2, 3}, "truncated"},
		{"no count", sent, "truncated"},
		{"negative header count", cat(sent, le32(-1), le32(0)), "header count -1"},
		{"huge header count", cat(sent, le32(math.MaxInt32), le32(0)), "header count"},
		{"string length beyond input", cat(sent, le32(1), []byte{0x7f, 'a'}), "length 127"},
		{"string length negative", cat(sent, le32(1), []byte{0xff, 0xff, 0xff, 0xff, 0x0f}), "length -1"},
		{"7-bit int too long", cat(sent, le32(1), []byte{0x80, 0x80, 0x80, 0x80, 0x10}), "too many bytes"},
		{"7-bit int cut", cat(sent, le32(1), []byte{0x80, 0x80}), "truncated"},
		{"missing value", cat(sent, le32(1), []byte{1, 'k'}), "truncated"},
		{"no data length", cat(sent, le32(0)), "truncated"},
		{"negative data length", cat(sent, le32(0), le32(-5)), "data length -5"},
		{"data beyond input", cat(sent, le32(0), le32(10), []byte("abc")), "data length 10"},
		{"bad attempts", rawEnvelope(kindUTC, []rawHeader{{"attempts", "abc"}}, nil), "error trying to read data for attempts = 'abc'"},
		{"attempts overflow", rawEnvelope(kindUTC, []rawHeader{{"attempts", "2147483648"}}, nil), "attempts = '2147483648'"},
		{"attempts empty", rawEnvelope(kindUTC, []rawHeader{{"attempts", ""}}, nil), "attempts = ''"},
		{"attempts decimal point", rawEnvelope(kindUTC, []rawHeader{{"attempts", "1.0"}}, nil), "attempts = '1.0'"},
		{"bad time-to-send", rawEnvelope(kindUTC, []rawHeader{{"time-to-send", "tomorrow"}}, nil), "error trying to read data for time-to-send = 'tomorrow'"},
		{"time-to-send Feb 30", rawEnvelope(kindUTC, []rawHeader{{"time-to-send", "2022-02-30T00:00:00.0000000"}}, nil), "time-to-send"},
		{"time-to-send hour 24", rawEnvelope(kindUTC, []rawHeader{{"time-to-send", "2022-02-03T24:00:00"}}, nil), "time-to-send"},
		{"time-to-send empty fraction", rawEnvelope(kindUTC, []rawHeader{{"time-to-send", "2022-02-03T00:00:00."}}, nil), "time-to-send"},
		{"time-to-send year 0", rawEnvelope(kindUTC, []rawHeader{{"time-to-send", "0000-01-01T00:00:00"}}, nil), "time-to-send"},
		{"time-to-send before min", rawEnvelope(kindUTC, []rawHeader{{"time-to-send", "0001-01-01T00:00:00+01:00"}}, nil), "time-to-send"},
		{"bad deliver-by", rawEnvelope(kindUTC, []rawHeader{{"deliver-by", "2022-01-01T00:00:00.0000000+25:00"}}, nil), "error trying to read data for deliver-by"},
		{"deliver-by trailing junk", rawEnvelope(kindUTC, []rawHeader{{"deliver-by", "2022-01-01T00:00:00Zx"}}, nil), "deliver-by"},
		{"duplicate header", rawEnvelope(kindUTC, []rawHeader{{"x", "1"}, {"x", "2"}}, nil), "duplicate header key"},
		{"ticks too large", rawEnvelope(kindUTC|(maxTicks+1), nil, nil), "exceed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := Decode(c.b)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode = %+v, %v; want ErrMalformed", e, err)
			}
			if e != nil {
				t.Fatal("non-nil envelope with error")
			}
			if !strings.Contains(err.Error(), c.message) {
				t.Fatalf("error %q does not mention %q", err, c.message)
			}
		})
	}
}

func TestDecodeEveryTruncation(t *testing.T) {
	full, err := Encode(fullEnvelope())
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(full) {
		if _, err := Decode(full[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("prefix of %d/%d bytes: err = %v", n, len(full), err)
		}
	}
}

func TestEncodeInvalid(t *testing.T) {
	long := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	early := time.Date(0, 12, 31, 23, 59, 59, 0, time.UTC)
	cases := []struct {
		name string
		e    *Envelope
	}{
		{"nil", nil},
		{"SentAt too late", &Envelope{SentAt: long}},
		{"SentAt too early", &Envelope{SentAt: early}},
		{"ScheduledTime too late", &Envelope{ScheduledTime: &long}},
		{"DeliverBy too early", &Envelope{DeliverBy: &early}},
		{"bad ID", &Envelope{ID: "nope"}},
		{"bad ConversationID", &Envelope{ConversationID: "0f8fad5b-d9cb-469f-a165-70867728950g"}},
		{"comma in accepted", &Envelope{AcceptedContentTypes: []string{"a,b"}}},
		{"attempts overflow", &Envelope{Attempts: math.MaxInt32 + 1}},
		{"reserved header", &Envelope{Headers: []Header{{"id", "x"}}}},
		{"duplicate header", &Envelope{Headers: []Header{{"x", "1"}, {"x", "2"}}}},
		{"invalid utf8 value", &Envelope{Source: "\xff"}},
		{"invalid utf8 header key", &Envelope{Headers: []Header{{"\xc0", "v"}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := Encode(c.e)
			if !errors.Is(err, ErrInvalid) || b != nil {
				t.Fatalf("Encode = %x, %v; want ErrInvalid", b, err)
			}
		})
	}
}

func TestParseDateTimeRounding(t *testing.T) {
	base := time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Time
	}{
		{"2022-01-01T00:00:00.12345674", base.Add(1234567 * 100)},
		{"2022-01-01T00:00:00.12345676", base.Add(1234568 * 100)},
		{"2022-01-01T00:00:00.12345675", base.Add(1234568 * 100)}, // half to even
		{"2022-01-01T00:00:00.12345665", base.Add(1234566 * 100)}, // half to even
		{"2022-01-01T00:00:00.123456650001", base.Add(1234567 * 100)},
		{"2022-01-01T00:00:00.99999999", base.Add(time.Second)},
		{" 2022-01-01T00:00:00\n", base},
		{"2022-01-01T00:00:00-00:00", base},
		{"2022-01-01T14:00:00+14:00", base},
		{"9999-12-31T23:59:59.9999999", time.Date(9999, 12, 31, 23, 59, 59, 999_999_900, time.UTC)},
		{"2024-02-29T00:00:00", time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)},
	}
	for _, c := range cases {
		got, err := parseDateTime(c.in)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("parseDateTime(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{
		"", "2022-01-01", "2022-01-01 00:00:00", "2022-1-01T00:00:00", "2023-02-29T00:00:00",
		"2022-01-01T00:60:00", "2022-01-01T00:00:60", "2022-01-01T00:00:00+14:30", "2022-01-01T00:00:00+0100",
		"2022-01-01T00:00:00z", "9999-12-31T23:59:59.99999999", "9999-12-31T23:59:59-00:01",
	} {
		if got, err := parseDateTime(bad); err == nil {
			t.Errorf("parseDateTime(%q) = %v, want error", bad, got)
		}
	}
}

func TestDecodeUTF8MaximalSubparts(t *testing.T) {
	cases := []struct{ in, want string }{
		{"abc", "abc"},
		{"\xff", "\uFFFD"},
		{"\xe2\x82", "\uFFFD"},                           // truncated 3-byte sequence: one subpart
		{"\xe2\x82a", "\uFFFDa"},                         // ditto, followed by ASCII
		{"\xf0\x9f\x98", "\uFFFD"},                       // truncated 4-byte sequence
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"},           // surrogate: ED then two lone continuations
		{"\xc0\xaf", "\uFFFD\uFFFD"},                     // overlong
		{"\xf4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"}, // > U+10FFFF
		{"\uFFFD", "\uFFFD"},                             // a real U+FFFD passes through
	}
	for _, c := range cases {
		if got := decodeUTF8([]byte(c.in)); got != c.want {
			t.Errorf("decodeUTF8(%q) = %q want %q", c.in, got, c.want)
		}
	}
}

func TestParseDotNetInt32(t *testing.T) {
	good := map[string]int32{"0": 0, "-0": 0, "007": 7, "+1": 1, "\t\n 42 \r": 42, "2147483647": math.MaxInt32, "-2147483648": math.MinInt32, "3\x00": 3}
	for in, want := range good {
		if got, ok := parseDotNetInt32(in); !ok || got != want {
			t.Errorf("parseDotNetInt32(%q) = %d, %v", in, got, ok)
		}
	}
	for _, in := range []string{"", " ", "+", "-", "+-1", "1 2", "0x10", "1e3", "2147483648", "-2147483649", "99999999999999999999", "\x003", "١"} {
		if got, ok := parseDotNetInt32(in); ok {
			t.Errorf("parseDotNetInt32(%q) = %d, want failure", in, got)
		}
	}
}

// checkRoundTrip asserts that a decoded envelope re-encodes, decodes to the
// same value, and that encoding is then stable byte for byte.
func checkRoundTrip(t *testing.T, x *Envelope) {
	t.Helper()
	b1, err := Encode(x)
	if err != nil {
		t.Fatalf("Encode(decoded %+v): %v", x, err)
	}
	y, err := Decode(b1)
	if err != nil {
		t.Fatalf("Decode(Encode(x)): %v", err)
	}
	if d := diffEnvelopes(x, y); d != "" {
		t.Fatalf("Decode(Encode(x)) != x: %s", d)
	}
	b2, err := Encode(y)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b1, b2) {
		t.Fatalf("encoding not stable:\n%x\n%x", b1, b2)
	}
}

func FuzzDecode(f *testing.F) {
	for _, e := range []*Envelope{exampleEnvelope(), fullEnvelope()} {
		b, err := Encode(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(rawEnvelope(kindUTC, []rawHeader{
		{"time-to-send", "2022-01-01T00:00:00.123456789+01:00"},
		{"attempts", " -4 "},
		{"id", "{0F8FAD5B-D9CB-469F-A165-70867728950E}"},
		{"ack-requested", "tRuE"},
		{"accepted-content-types", ",,"},
		{"source", ""},
		{"x", "\xe2\x82"},
	}, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		checkRoundTrip(t, x)
	})
}

// FuzzRoundTrip builds envelopes from fuzzed field values and checks that
// whatever Encode accepts decodes back to the same envelope (after the
// documented normalisations: 100 ns time precision, canonical GUIDs).
func FuzzRoundTrip(f *testing.F) {
	f.Add(int64(637765920000000000), "src", "Ping", "application/json", []byte{0x0f, 0x8f}, "a,b", int64(1), int32(3), "k", "v", []byte("{}"))
	f.Fuzz(func(t *testing.T, sentTicks int64, source, msgType, contentType string, idBytes []byte,
		accepted string, schedTicks int64, attempts int32, hk, hv string, data []byte) {
		var id string
		if len(idBytes) > 0 {
			var g [16]byte
			copy(g[:], idBytes)
			id = fmt.Sprintf("%X", g[:]) // upper-case N form; Encode normalises
		}
		var sched *time.Time
		if schedTicks >= 0 && schedTicks <= maxTicks {
			sched = timePtr(ticksToTime(schedTicks).Add(99)) // sub-tick part must be dropped
		}
		var acc []string
		if accepted != "" {
			acc = strings.Split(accepted, ",")
		}
		e := &Envelope{
			SentAt:               ticksToTime(sentTicks & ticksMask),
			Source:               source,
			MessageType:          msgType,
			ContentType:          contentType,
			ID:                   id,
			AcceptedContentTypes: acc,
			ScheduledTime:        sched,
			Attempts:             int(attempts),
			Headers:              []Header{{hk, hv}},
			Data:                 data,
		}
		b, err := Encode(e)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(e)): %v", err)
		}
		want := *e
		want.ID, _ = guidForWrite("ID", id)
		if sched != nil {
			want.ScheduledTime = timePtr(sched.Truncate(100))
		}
		if d := diffEnvelopes(got, &want); d != "" {
			t.Fatal(d)
		}
		checkRoundTrip(t, got)
	})
}
