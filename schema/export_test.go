package schema

// CatalogStatements are the catalog statements of Migrate and Verify of a dialect, by name
// (for the offline checks).
func CatalogStatements(d Dialect) map[string]string {
	x := dialectDDL(d)
	return map[string]string{
		"migration lock": x.migrationLock(),
		"objects":        x.objectsQuery(),
		"indexes":        x.indexesQuery(),
		"columns":        columnsQuery(x),
		"primary keys":   primaryKeysQuery(x),
	}
}
