// Package envelope implements Jasper's binary envelope codec: the byte
// layout that .NET's System.IO.BinaryWriter produces in Jasper's
// EnvelopeSerializer (J2 src/Jasper/Runtime/Serialization/EnvelopeSerializer.cs,
// J1 src/Jasper/Envelope.Writing.cs / Envelope.Reading.cs). J1 stores it in
// the body column of the inbox/outbox tables, J2 uses it for wrapped
// scheduled sends ("scheduled-envelope" rows with content type
// "binary/envelope"), and Wolverine went back to it. The layout below is
// the one this module implements and tests (envelope_test.go).
//
// # Layout
//
// All integers are little-endian; a string is its UTF-8 byte length as an
// unsigned LEB128 ("7-bit encoded") int32 followed by the bytes.
//
//	int64   sentAt       DateTime.ToBinary(): bits 62-63 kind, bits 0-61 ticks
//	                     (100 ns since 0001-01-01T00:00:00); written with UTC kind
//	int32   headerCount
//	headerCount × (string key, string value)
//	int32   dataLength
//	byte[]  data         the serialized message
//
// Known headers are written first, in this order, and only when present:
// source, message-type, reply-uri, content-type, correlation-id,
// conversation-id, destination, saga-id, parent-id, accepted-content-types,
// id, reply-requested, ack-requested, time-to-send, attempts, deliver-by;
// then every other header in Envelope.Headers order. This is the J2 order
// (J1 wrote parent-id, holding a GUID, in conversation-id's slot and also
// sent-attempts and received-at; a J2 reader and this package put those
// J1-only keys in Headers, and read J1's parent-id as a plain string).
//
// Value encodings: GUIDs in .NET's lower-case "D" form; ack-requested as
// "True"; attempts in decimal; time-to-send as UTC
// "yyyy-MM-ddTHH:mm:ss.fffffff" without zone; deliver-by as
// DateTimeOffset.ToString("o") in UTC, "yyyy-MM-ddTHH:mm:ss.fffffff+00:00";
// accepted-content-types comma-joined.
//
// Encode reproduces the .NET writer byte for byte. Decode follows the .NET
// reader, including its leniency (ack-requested compared case-insensitively
// with "true", unparsable id/conversation-id values ignored, any DateTime
// kind accepted for sentAt, trailing bytes after the data ignored), but
// reports structural damage and unparsable time/attempts values as errors
// matching ErrMalformed instead of throwing or reading short.
package envelope
