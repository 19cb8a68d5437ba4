package storetest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// Every method of store.Store (and so every operation of store.Ops) is called by the suite:
// an operation added to the boundary fails this test until a case exercises it.
func TestEveryOperationIsExercised(t *testing.T) {
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	fset := token.NewFileSet()
	for _, entry := range entries {
		name := entry.Name()
		// statements.go calls the dialects' statement methods, some named like operations.
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") || name == "statements.go" {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				used[sel.Sel.Name] = true
			}
			return true
		})
	}
	typ := reflect.TypeFor[store.Store]()
	for i := range typ.NumMethod() {
		if name := typ.Method(i).Name; !used[name] {
			t.Errorf("no case of the suite calls store.Store.%s", name)
		}
	}
}
