package admin

import (
	"fmt"

	"github.com/watermill-jasper/watermill-jasper/schema"
)

// postgresStatements is every statement of this package for PostgreSQL ($n placeholders).
func postgresStatements(cfg schema.Config) statements {
	inc := cfg.Qualified(schema.IncomingTable)
	out := cfg.Qualified(schema.OutgoingTable)
	dlq := cfg.Qualified(schema.DeadLetterTable)
	return statements{
		counts: fmt.Sprintf(`SELECT %[4]d, status, 0, count(*) FROM %[1]s GROUP BY status
UNION ALL SELECT %[5]d, destination, 0, count(*) FROM %[2]s GROUP BY destination
UNION ALL SELECT %[6]d, '', 0, count(*) FROM %[3]s
UNION ALL SELECT %[7]d, '', owner_id, count(*) FROM %[1]s GROUP BY owner_id
UNION ALL SELECT %[8]d, '', owner_id, count(*) FROM %[2]s GROUP BY owner_id`,
			inc, out, dlq, kindIncomingStatus, kindOutgoingDest, kindDeadLetters, kindIncomingOwner, kindOutgoingOwner),
		releaseIncoming:  `UPDATE ` + inc + ` SET owner_id = $1 WHERE owner_id <> $1`,
		releaseOutgoing:  `UPDATE ` + out + ` SET owner_id = $1 WHERE owner_id <> $1`,
		clearOutgoing:    `DELETE FROM ` + out,
		clearIncoming:    `DELETE FROM ` + inc,
		clearDeadLetters: `DELETE FROM ` + dlq,
	}
}
