package dbx

import "database/sql/driver"

// errBadConn makes database/sql discard a connection whose session state is unknown.
var errBadConn = driver.ErrBadConn
