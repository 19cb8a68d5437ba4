package envelope

import (
	"errors"
	"strings"
	"time"
)

const (
	ticksPerSecond = 10_000_000
	// unixEpochTicks is 1970-01-01T00:00:00Z in .NET ticks
	// (621355968000000000); the seconds form avoids overflow below.
	unixEpochSeconds = 62_135_596_800
	// maxTicks is DateTime.MaxValue.Ticks (9999-12-31T23:59:59.9999999).
	maxTicks = 3_155_378_975_999_999_999

	kindUTC   = int64(0x4000000000000000)
	ticksMask = int64(0x3FFFFFFFFFFFFFFF)

	timeToSendLayout = "2006-01-02T15:04:05.0000000"
)

var (
	minDotNetTime = time.Date(1, time.January, 1, 0, 0, 0, 0, time.UTC)
	// maxDotNetTime is the last instant that truncates to maxTicks.
	maxDotNetTime = time.Date(9999, time.December, 31, 23, 59, 59, 999_999_999, time.UTC)
)

// ticksToTime converts .NET ticks (0 ≤ ticks ≤ maxTicks) to a UTC time.
func ticksToTime(ticks int64) time.Time {
	return time.Unix(ticks/ticksPerSecond-unixEpochSeconds, (ticks%ticksPerSecond)*100).UTC()
}

// timeToTicks converts t to .NET ticks, truncating to 100 ns. ok is false
// when t lies outside DateTime's range.
func timeToTicks(t time.Time) (ticks int64, ok bool) {
	if t.Before(minDotNetTime) || t.After(maxDotNetTime) {
		return 0, false
	}
	return (t.Unix()+unixEpochSeconds)*ticksPerSecond + int64(t.Nanosecond()/100), true
}

// truncateTicks truncates t to .NET's 100 ns resolution, in UTC.
func truncateTicks(t time.Time) (time.Time, bool) {
	ticks, ok := timeToTicks(t)
	if !ok {
		return time.Time{}, false
	}
	return ticksToTime(ticks), true
}

// formatTimeToSend formats like .NET
// ScheduledTime.ToUniversalTime().ToString("yyyy-MM-ddTHH:mm:ss.fffffff").
func formatTimeToSend(t time.Time) string {
	return t.UTC().Format(timeToSendLayout)
}

// formatDeliverBy formats like .NET DateTimeOffset.ToString("o") for a UTC
// offset (Jasper normalises DeliverBy to UTC).
func formatDeliverBy(t time.Time) string {
	return t.UTC().Format(timeToSendLayout) + "+00:00"
}

var (
	errTimeSyntax = errors.New("not an ISO 8601 date-time")
	errTimeField  = errors.New("date-time field out of range")
	errTimeRange  = errors.New("date-time outside .NET DateTime range")
)

// parseDateTime parses the ISO 8601 subset that Jasper writes and .NET
// reads back: yyyy-MM-ddTHH:mm:ss, an optional fraction of any length
// (digits past the seventh round half to even, as XmlConvert and
// DateTime.Parse do), and an optional "Z" or ±hh:mm offset. A value
// without zone is taken as UTC (XmlDateTimeSerializationMode.Utc). Leading
// and trailing XML whitespace is ignored. The result is UTC with 100 ns
// precision.
func parseDateTime(s string) (time.Time, error) {
	s = strings.Trim(s, " \t\r\n")
	p := dtParser{s: s}
	year := p.digits(4)
	p.lit('-')
	month := p.digits(2)
	p.lit('-')
	day := p.digits(2)
	p.lit('T')
	hour := p.digits(2)
	p.lit(':')
	minute := p.digits(2)
	p.lit(':')
	second := p.digits(2)
	if p.bad {
		return time.Time{}, errTimeSyntax
	}
	var frac int64 // in ticks
	if p.peek('.') {
		p.i++
		start := p.i
		var n int
		roundUp, half, rest := false, false, false
		for p.i < len(s) && isDigit(s[p.i]) {
			d := int64(s[p.i] - '0')
			switch {
			case n < 7:
				frac = frac*10 + d
			case n == 7:
				roundUp, half = d > 5, d == 5
			default:
				rest = rest || d != 0
			}
			n++
			p.i++
		}
		if p.i == start {
			return time.Time{}, errTimeSyntax
		}
		for ; n < 7; n++ {
			frac *= 10
		}
		if roundUp || (half && (rest || frac%2 == 1)) {
			frac++
		}
	}
	var offset int // seconds east of UTC
	switch {
	case p.peek('Z'):
		p.i++
	case p.peek('+'), p.peek('-'):
		sign := 1
		if s[p.i] == '-' {
			sign = -1
		}
		p.i++
		oh := p.digits(2)
		p.lit(':')
		om := p.digits(2)
		if p.bad {
			return time.Time{}, errTimeSyntax
		}
		if oh > 14 || om > 59 || (oh == 14 && om != 0) {
			return time.Time{}, errTimeField
		}
		offset = sign * (oh*3600 + om*60)
	}
	if p.i != len(s) {
		return time.Time{}, errTimeSyntax
	}
	if year < 1 || month < 1 || month > 12 || day < 1 || day > daysIn(year, time.Month(month)) ||
		hour > 23 || minute > 59 || second > 59 {
		return time.Time{}, errTimeField
	}
	t := time.Date(year, time.Month(month), day, hour, minute, second, 0, time.UTC).
		Add(time.Duration(frac) * 100).
		Add(-time.Duration(offset) * time.Second)
	if _, ok := timeToTicks(t); !ok {
		return time.Time{}, errTimeRange
	}
	return t, nil
}

func daysIn(year int, m time.Month) int {
	return time.Date(year, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// dtParser is a tiny cursor over a date-time string; any mismatch sets bad.
type dtParser struct {
	s   string
	i   int
	bad bool
}

func (p *dtParser) peek(c byte) bool { return !p.bad && p.i < len(p.s) && p.s[p.i] == c }

func (p *dtParser) lit(c byte) {
	if !p.peek(c) {
		p.bad = true
		return
	}
	p.i++
}

func (p *dtParser) digits(n int) int {
	if p.bad || p.i+n > len(p.s) {
		p.bad = true
		return 0
	}
	v := 0
	for _, c := range []byte(p.s[p.i : p.i+n]) {
		if !isDigit(c) {
			p.bad = true
			return 0
		}
		v = v*10 + int(c-'0')
	}
	p.i += n
	return v
}
