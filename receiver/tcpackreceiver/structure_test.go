package tcpackreceiver

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// TestFilesDependOneWay keeps the package readable from the bottom up: a file may use what
// another file declares only if that file does not use, directly or through others, what the
// first declares. Uses are package-level names and unexported methods whose name only one
// file declares.
func TestFilesDependOneWay(t *testing.T) {
	graph := fileGraph(t, ".")
	if cycle := findCycle(graph); cycle != nil {
		t.Fatalf("files depend on each other in a circle: %s", strings.Join(cycle, " -> "))
	}
	// The registry's shape: the receiver needs the config, the config its families, the
	// families only the helpers below them.
	for _, want := range [][2]string{{"receiver.go", "config.go"}, {"config.go", "drops.go"}, {"drops.go", "family.go"}} {
		if !slices.Contains(graph[want[0]], want[1]) {
			t.Errorf("%s does not use %s: the check no longer sees the package's structure", want[0], want[1])
		}
	}
}

// fileGraph maps each non-test file of the package in dir to the files whose declarations it uses.
func fileGraph(t *testing.T, dir string) map[string][]string {
	t.Helper()
	fset := token.NewFileSet()
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]*ast.File{}
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(p)] = f
	}
	declared := map[string]string{}  // package-level name -> file
	methods := map[string][]string{} // method name -> files declaring it
	for name, f := range files {
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv != nil {
					// Exported methods are left out: their names are also other packages' (Validate, Start).
					if !d.Name.IsExported() {
						methods[d.Name.Name] = append(methods[d.Name.Name], name)
					}
				} else {
					declared[d.Name.Name] = name
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						declared[s.Name.Name] = name
					case *ast.ValueSpec:
						for _, n := range s.Names {
							declared[n.Name] = name
						}
					}
				}
			}
		}
	}
	graph := map[string][]string{}
	for name, f := range files {
		locals := localNames(f)
		imports := map[string]bool{}
		for _, im := range f.Imports {
			path := strings.Trim(im.Path.Value, `"`)
			imports[path[strings.LastIndex(path, "/")+1:]] = true
			if im.Name != nil {
				imports[im.Name.Name] = true
			}
		}
		uses := map[string]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok && imports[x.Name] && !locals[x.Name] {
					return false // a name of another package
				}
				if in := methods[n.Sel.Name]; len(in) == 1 {
					uses[in[0]] = true
				}
				ast.Inspect(n.X, func(m ast.Node) bool { return visitIdent(m, declared, locals, uses) })
				return false
			case *ast.KeyValueExpr:
				// A composite literal's field name is not a use of a package-level name.
				if _, ok := n.Key.(*ast.Ident); ok {
					ast.Inspect(n.Value, func(m ast.Node) bool { return visitIdent(m, declared, locals, uses) })
					return false
				}
			}
			return visitIdent(n, declared, locals, uses)
		})
		delete(uses, name)
		for u := range uses {
			graph[name] = append(graph[name], u)
		}
		sort.Strings(graph[name])
	}
	return graph
}

func visitIdent(n ast.Node, declared map[string]string, locals map[string]bool, uses map[string]bool) bool {
	if id, ok := n.(*ast.Ident); ok && !locals[id.Name] {
		if in, ok := declared[id.Name]; ok {
			uses[in] = true
		}
	}
	return true
}

// localNames are the names a file declares inside functions (parameters, results, variables),
// which shadow package-level ones; a name used both ways is left out rather than guessed.
func localNames(f *ast.File) map[string]bool {
	locals := map[string]bool{}
	add := func(fl *ast.FieldList) {
		if fl == nil {
			return
		}
		for _, field := range fl.List {
			for _, n := range field.Names {
				locals[n.Name] = true
			}
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.FuncDecl:
			add(n.Recv)
			add(n.Type.Params)
			add(n.Type.Results)
		case *ast.FuncLit:
			add(n.Type.Params)
			add(n.Type.Results)
		case *ast.AssignStmt:
			if n.Tok == token.DEFINE {
				for _, l := range n.Lhs {
					if id, ok := l.(*ast.Ident); ok {
						locals[id.Name] = true
					}
				}
			}
		case *ast.RangeStmt:
			for _, e := range []ast.Expr{n.Key, n.Value} {
				if id, ok := e.(*ast.Ident); ok && n.Tok == token.DEFINE {
					locals[id.Name] = true
				}
			}
		case *ast.DeclStmt:
			if g, ok := n.Decl.(*ast.GenDecl); ok {
				for _, s := range g.Specs {
					if v, ok := s.(*ast.ValueSpec); ok {
						for _, id := range v.Names {
							locals[id.Name] = true
						}
					}
				}
			}
		}
		return true
	})
	return locals
}

// findCycle returns one cycle of the graph, or nil.
func findCycle(graph map[string][]string) []string {
	const (
		unseen = iota
		open
		done
	)
	state := map[string]int{}
	var stack []string
	var visit func(string) []string
	visit = func(n string) []string {
		state[n] = open
		stack = append(stack, n)
		for _, m := range graph[n] {
			switch state[m] {
			case open:
				i := slices.Index(stack, m)
				return append(slices.Clone(stack[i:]), m)
			case unseen:
				if c := visit(m); c != nil {
					return c
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		return nil
	}
	names := make([]string, 0, len(graph))
	for n := range graph {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if state[n] == unseen {
			if c := visit(n); c != nil {
				return c
			}
		}
	}
	return nil
}

// A cycle must be found, or the test above could never fail.
func TestFindCycle(t *testing.T) {
	if c := findCycle(map[string][]string{"a.go": {"b.go"}, "b.go": {"c.go"}, "c.go": {"a.go"}}); len(c) != 4 {
		t.Errorf("cycle a -> b -> c -> a not found: %v", c)
	}
	if c := findCycle(map[string][]string{"a.go": {"b.go", "c.go"}, "b.go": {"c.go"}}); c != nil {
		t.Errorf("found a cycle in a DAG: %v", c)
	}
}
