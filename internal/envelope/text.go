package envelope

import (
	"strings"
	"unicode/utf8"
)

// parseGUID parses a GUID the way .NET's Guid.TryParse does for the "D"
// (8-4-4-4-12), "N" (32 digits), "B" ({D}) and "P" ((D)) formats, after
// trimming surrounding white space, and returns the lower-case "D" form
// that Guid.ToString() produces. The rarely used "X" format and .NET's
// compatibility quirks (0x/+ prefixes inside groups) are not supported and
// report ok == false.
func parseGUID(s string) (canonical string, ok bool) {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && ((s[0] == '{' && s[len(s)-1] == '}') || (s[0] == '(' && s[len(s)-1] == ')')) {
		s = s[1 : len(s)-1]
		if len(s) != 36 {
			return "", false
		}
	}
	var hex [32]byte
	switch len(s) {
	case 36:
		n := 0
		for i := 0; i < 36; i++ {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if s[i] != '-' {
					return "", false
				}
				continue
			}
			hex[n] = s[i]
			n++
		}
	case 32:
		copy(hex[:], s)
	default:
		return "", false
	}
	var b strings.Builder
	b.Grow(36)
	for i, c := range hex {
		switch {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			c += 'a' - 'A'
		default:
			return "", false
		}
		if i == 8 || i == 12 || i == 16 || i == 20 {
			b.WriteByte('-')
		}
		b.WriteByte(c)
	}
	return b.String(), true
}

// emptyGUID is Guid.Empty.ToString().
const emptyGUID = "00000000-0000-0000-0000-000000000000"

// decodeUTF8 turns bytes into a string the way .NET's UTF8Encoding does
// when BinaryReader.ReadString decodes them: every maximal ill-formed
// subsequence (Unicode §3.9, "U+FFFD substitution of maximal subparts")
// becomes one U+FFFD.
func decodeUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || size > 1 {
			sb.Write(b[i : i+size])
			i += size
			continue
		}
		sb.WriteRune(utf8.RuneError)
		i += maximalSubpart(b[i:])
	}
	return sb.String()
}

// maximalSubpart returns the length (≥ 1) of the longest prefix of p that
// starts a well-formed UTF-8 sequence, for p not starting with one.
func maximalSubpart(p []byte) int {
	var need int
	lo, hi := byte(0x80), byte(0xBF)
	switch b0 := p[0]; {
	case 0xC2 <= b0 && b0 <= 0xDF:
		need = 1
	case b0 == 0xE0:
		need, lo = 2, 0xA0
	case b0 == 0xED:
		need, hi = 2, 0x9F
	case 0xE1 <= b0 && b0 <= 0xEF:
		need = 2
	case b0 == 0xF0:
		need, lo = 3, 0x90
	case b0 == 0xF4:
		need, hi = 3, 0x8F
	case 0xF1 <= b0 && b0 <= 0xF3:
		need = 3
	default:
		return 1
	}
	if len(p) < 2 || p[1] < lo || p[1] > hi {
		return 1
	}
	n := 2
	for n <= need && n < len(p) && 0x80 <= p[n] && p[n] <= 0xBF {
		n++
	}
	return n
}

// parseDotNetInt32 parses like .NET int.Parse(s) with NumberStyles.Integer
// and the invariant culture: optional leading/trailing white space
// (U+0009–U+000D, U+0020), an optional leading '+' or '-', one or more
// ASCII digits, optionally followed by NUL characters (which .NET ignores).
func parseDotNetInt32(s string) (int32, bool) {
	isWhite := func(c byte) bool { return c == ' ' || ('\t' <= c && c <= '\r') }
	s = strings.TrimRight(s, "\x00")
	i, j := 0, len(s)
	for i < j && isWhite(s[i]) {
		i++
	}
	for j > i && isWhite(s[j-1]) {
		j--
	}
	s = s[i:j]
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "" {
		return 0, false
	}
	var v int64
	for k := 0; k < len(s); k++ {
		c := s[k]
		if !isDigit(c) {
			return 0, false
		}
		v = v*10 + int64(c-'0')
		if v > 1<<31 {
			return 0, false
		}
	}
	if neg {
		v = -v
	}
	if v > 1<<31-1 {
		return 0, false
	}
	return int32(v), true
}
