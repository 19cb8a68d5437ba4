package postgres

import (
	"fmt"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// adminStatements are the administration statements (sqlstore.AdminStatements).
func adminStatements(cfg layout.Config) sqlstore.AdminStrings {
	inc := cfg.Qualified(layout.IncomingTable)
	out := cfg.Qualified(layout.OutgoingTable)
	dlq := cfg.Qualified(layout.DeadLetterTable)
	a := deadLetterStatements(cfg)
	a.CountsSQL = fmt.Sprintf(`SELECT %[4]d, status, 0, count(*) FROM %[1]s GROUP BY status
UNION ALL SELECT %[5]d, destination, 0, count(*) FROM %[2]s GROUP BY destination
UNION ALL SELECT %[6]d, '', 0, count(*) FROM %[3]s
UNION ALL SELECT %[7]d, '', owner_id, count(*) FROM %[1]s GROUP BY owner_id
UNION ALL SELECT %[8]d, '', owner_id, count(*) FROM %[2]s GROUP BY owner_id`,
		inc, out, dlq, sqlstore.CountIncomingStatus, sqlstore.CountOutgoingDestination, sqlstore.CountDeadLetters, sqlstore.CountIncomingOwner, sqlstore.CountOutgoingOwner)
	a.ReleaseAllIncomingSQL = `UPDATE ` + inc + ` SET owner_id = $1 WHERE owner_id <> $1`
	a.ReleaseAllOutgoingSQL = `UPDATE ` + out + ` SET owner_id = $1 WHERE owner_id <> $1`
	a.ClearOutgoingSQL = `DELETE FROM ` + out
	a.ClearIncomingSQL = `DELETE FROM ` + inc
	a.ClearDeadLettersSQL = `DELETE FROM ` + dlq
	return a
}
