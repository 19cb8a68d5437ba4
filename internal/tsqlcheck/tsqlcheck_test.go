//go:build tsqlcheck

package tsqlcheck

import (
	"strings"
	"testing"
)

// The grammar accepts the T-SQL forms the SQL Server dialect relies on and rejects what is
// not T-SQL (PostgreSQL forms among them), so its verdicts mean something.
func TestParseTellsTSQLFromNot(t *testing.T) {
	valid := map[string]string{
		"update top output hints": "UPDATE TOP (@p4) o SET [owner_id] = @p1 OUTPUT inserted.[id] FROM [dbo].[t] AS o WITH (READPAST, UPDLOCK, ROWLOCK) WHERE o.[owner_id] = 0",
		"delete output into":      "DELETE FROM e OUTPUT deleted.[id] INTO @m FROM [dbo].[t] AS e WHERE e.[id] IN (SELECT [id] FROM @x)",
		"merge holdlock":          "MERGE [dbo].[d] WITH (HOLDLOCK) AS d USING (SELECT 1 AS id) AS s ON d.[id] = s.[id] WHEN MATCHED THEN UPDATE SET [x] = 1 WHEN NOT MATCHED THEN INSERT ([id]) VALUES (s.[id]);",
		"openjson with":           "SELECT x.[d] FROM OPENJSON(@p2) WITH ([d] varchar(250) '$', [n] nvarchar(max) '$') AS x",
		"applock":                 "DECLARE @r int; EXEC @r = sp_getapplock @Resource = @p1, @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; SELECT CAST(CASE WHEN @r >= 0 THEN 1 ELSE 0 END AS bit)",
	}
	invalid := map[string]string{
		"missing column":  "SELECT a, FROM t",
		"returning":       "UPDATE t SET a = 1 RETURNING a",
		"limit":           "SELECT * FROM t LIMIT 5",
		"unbalanced":      "SELECT (1 + 2 FROM t",
		"on conflict":     "INSERT INTO t (id) VALUES (@p1) ON CONFLICT (id) DO NOTHING",
		"for update skip": "SELECT id FROM t FOR UPDATE SKIP LOCKED",
	}
	all := map[string]string{}
	for k, v := range valid {
		all["valid: "+k] = v
	}
	for k, v := range invalid {
		all["invalid: "+k] = v
	}
	failures, err := Parse(all)
	if err != nil {
		t.Fatal(err)
	}
	for k := range valid {
		if msg, bad := failures["valid: "+k]; bad {
			t.Errorf("valid T-SQL rejected (%s): %s", k, msg)
		}
	}
	for k := range invalid {
		if _, bad := failures["invalid: "+k]; !bad {
			t.Errorf("not T-SQL, but accepted: %s", k)
		}
	}
}

// Without its packages the check fails, naming the command that installs them; it never
// installs them itself.
func TestParseNeedsInstalledGrammar(t *testing.T) {
	err := installed(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), installHint) {
		t.Fatalf("installed(empty dir) = %v, want an error naming %s", err, installHint)
	}
}
