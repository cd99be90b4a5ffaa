//! The sandbox templates run in. A template is data an operator edits at run time, so it
//! gets what a notification needs and nothing that shows the engine's insides or does
//! unbounded work:
//!
//! - Syntax ([`allowed`]): text, `{{ expression }}`, `{% if %}` and `{% for %}` over the
//!   notification's own data. No `set`, `with`, `macro`, `call`, `filter` blocks, `include`,
//!   `import`, `extends`, `autoescape`; no function calls; no `~`, `+`, `*` or `**`; lists
//!   and maps of constants only; slices of variables only. With nothing to bind a computed
//!   value to and nothing to repeat it with, no value can grow beyond what one filter makes
//!   of the data, every loop is bounded by the data, and one step costs at most what the
//!   data or the template's own text is long.
//! - Names: no globals at all (minijinja's default `debug`, `range`, `dict` and `namespace`
//!   are not registered), and only the filters in [`FILTERS`] and the tests in [`TESTS`].
//! - Work: [`FUEL`] instructions per rendering, [`MAX_FILTER_BYTES`] of text through
//!   filters, [`MAX_DEPTH`] levels of recursion.
//! - Output: a [`Budget`] of characters, checked as the text is written, so a rendering
//!   stops at the first character too many instead of building the whole text.

use std::borrow::Cow;
use std::io;

use minijinja::machinery::{self, ast};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{StringInput, Value};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, filters, tests as is};

/// Filters a template may use: text case and whitespace, a fallback for missing values
/// (`l.name | default(l.product_id)`), the first or last line, sizes, rounding, HTML
/// escaping for HTML bodies, and `replace` (bounded, see [`replace`]). Nothing that prints
/// structure (`tojson`, `pprint`), reaches into values (`attr`, `map`, `items`) or
/// multiplies text (`join`, `indent`, `format`).
pub const FILTERS: [&str; 12] = ["upper", "lower", "title", "capitalize", "trim", "length", "default", "first", "last", "round", "escape", "replace"];

/// Tests a template may use (`{% if reason is none %}`, alternating lines).
pub const TESTS: [&str; 5] = ["defined", "undefined", "none", "odd", "even"];

/// Instructions one rendering may run. With the most lines an order may have, the seeded
/// body takes about 800 and an HTML table with filters on every line about 2,000; a
/// template that loops too much fails within a few hundred milliseconds (one instruction
/// may handle up to a template's 10,000 characters) instead of stalling the worker.
pub const FUEL: u64 = 50_000;

/// Recursion minijinja allows (its default is 500). Without macros or includes only loops
/// recurse; the parser refuses deeper nesting of the source itself.
pub const MAX_DEPTH: usize = 32;

/// Characters one `replace` may produce: chained replaces would otherwise grow a value
/// exponentially.
pub const MAX_VALUE_CHARS: usize = 10_000;

/// Bytes of text the filters of one rendering may go through. Fuel counts a filter as one
/// step whatever its input; this bounds their work (the largest order through `upper`
/// name by name is 10,000).
pub const MAX_FILTER_BYTES: usize = 1_000_000;

/// A printed variable that does not exist is an error, not an empty string: a typo in a
/// template is caught when it is stored instead of sending "Dear ,". Testing an absent
/// variable in `{% if %}` stays allowed.
const UNDEFINED: UndefinedBehavior = UndefinedBehavior::SemiStrict;

pub fn environment() -> Environment<'static> {
    let mut env = Environment::empty();
    env.set_undefined_behavior(UNDEFINED);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(MAX_DEPTH);
    // Errors name what is undefined ("`customer_name` is undefined"), in release builds too.
    // The variables' values are only in an error's alternate (`{:#}`) form, never shown.
    env.set_debug(true);
    // The filters that read a whole text are metered (see `MAX_FILTER_BYTES`); the others
    // are minijinja's own and take constant work.
    env.add_filter("upper", |state: &mut State, v: StringInput| charge(state, v.as_str().len()).map(|()| filters::upper(v)));
    env.add_filter("lower", |state: &mut State, v: StringInput| charge(state, v.as_str().len()).map(|()| filters::lower(v)));
    env.add_filter("capitalize", |state: &mut State, v: StringInput| charge(state, v.as_str().len()).map(|()| filters::capitalize(v)));
    env.add_filter("title", |state: &mut State, v: Cow<'_, str>| charge(state, v.len()).map(|()| filters::title(v)));
    env.add_filter("trim", |state: &mut State, v: StringInput, chars: Option<Cow<'_, str>>| {
        charge(state, v.as_str().len()).map(|()| filters::trim(v, chars))
    });
    env.add_filter("length", |state: &mut State, v: &Value| charge(state, v.as_str().map_or(1, str::len)).and_then(|()| filters::length(v)));
    env.add_filter("escape", |state: &mut State, v: &Value| charge(state, v.as_str().map_or(1, str::len)).and_then(|()| filters::escape(state, v)));
    env.add_filter("replace", replace);
    env.add_filter("default", filters::default);
    env.add_filter("first", filters::first);
    env.add_filter("last", filters::last);
    env.add_filter("round", filters::round);
    env.add_test("defined", is::is_defined);
    env.add_test("undefined", is::is_undefined);
    env.add_test("none", is::is_none);
    env.add_test("odd", is::is_odd);
    env.add_test("even", is::is_even);
    env
}

/// The bytes the filters of the current rendering went through.
struct FilterBytes(usize);

/// Counts `bytes` more of filter work, failing past [`MAX_FILTER_BYTES`].
fn charge(state: &mut State, bytes: usize) -> Result<(), Error> {
    let spent = state.get_or_insert_extension(FilterBytes(0));
    spent.0 += bytes;
    if spent.0 > MAX_FILTER_BYTES {
        return Err(Error::new(ErrorKind::InvalidOperation, format!("the filters need more than {MAX_FILTER_BYTES} bytes of text, the limit for one rendering")));
    }
    Ok(())
}

/// `value` with every `from` replaced by `to`, refused before it is built when it would
/// have more than [`MAX_VALUE_CHARS`] characters.
fn replace(state: &mut State, value: Cow<'_, str>, from: Cow<'_, str>, to: Cow<'_, str>) -> Result<String, Error> {
    charge(state, value.len())?;
    let hits = value.matches(&*from).count();
    let chars = value.chars().count() - hits * from.chars().count() + hits * to.chars().count();
    if chars > MAX_VALUE_CHARS {
        return Err(Error::new(ErrorKind::InvalidOperation, format!("replace would make {chars} characters, more than the {MAX_VALUE_CHARS} a value may have")));
    }
    charge(state, chars)?;
    Ok(value.replace(&*from, &to))
}

/// Why the template in `source` is not allowed: a syntax error (minijinja's), or
/// something outside the sandbox (with its line).
pub enum Refusal {
    Syntax(Error),
    Outside(String),
}

/// Parses `source` and walks it: every statement, expression, filter and test must be on
/// the allow-list (see the module's documentation). Anything not listed is refused,
/// including what a later minijinja may add.
pub fn allowed(source: &str) -> Result<(), Refusal> {
    let root = machinery::parse(source, "<string>", SyntaxConfig::default()).map_err(Refusal::Syntax)?;
    Walk { source }.stmt(&root).map_err(Refusal::Outside)
}

struct Walk<'s> {
    source: &'s str,
}

impl Walk<'_> {
    fn stmts(&self, body: &[ast::Stmt]) -> Result<(), String> {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&self, stmt: &ast::Stmt) -> Result<(), String> {
        use ast::Stmt;
        match stmt {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitRaw(_) => Ok(()),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::IfCond(c) => {
                self.expr(&c.expr)?;
                self.stmts(&c.true_body)?;
                self.stmts(&c.false_body)
            }
            Stmt::ForLoop(l) => {
                let line = l.span().start_line;
                if l.recursive {
                    return Err(format!("line {line}: recursive loops are not available in notification templates"));
                }
                if !is_data(&l.iter) {
                    return Err(format!("line {line}: `{{% for %}}` may only loop over a variable such as `lines` (or a part of one) in notification templates"));
                }
                self.expr(&l.iter)?;
                self.target(&l.target, line)?;
                if let Some(filter) = &l.filter_expr {
                    self.expr(filter)?;
                }
                self.stmts(&l.body)?;
                self.stmts(&l.else_body)
            }
            other => {
                let (keyword, line) = self.keyword_at(stmt_offset(other));
                Err(format!("line {line}: `{{% {keyword} %}}` is not available in notification templates (only `{{% if %}}` and `{{% for %}}` are)"))
            }
        }
    }

    /// A loop's variable: a name, or names to unpack into.
    fn target(&self, target: &ast::Expr, line: u16) -> Result<(), String> {
        match target {
            ast::Expr::Var(_) => Ok(()),
            ast::Expr::Tuple(t) => t.items.iter().try_for_each(|i| self.target(i, line)),
            _ => Err(format!("line {line}: a loop variable must be a name")),
        }
    }

    fn expr(&self, expr: &ast::Expr) -> Result<(), String> {
        use ast::{BinOpKind, Expr};
        match expr {
            Expr::Var(_) | Expr::Const(_) => Ok(()),
            Expr::GetAttr(a) => self.expr(&a.expr),
            Expr::GetItem(i) => {
                self.expr(&i.expr)?;
                self.expr(&i.subscript_expr)
            }
            Expr::Slice(s) => {
                // Slicing walks a text character by character: only the data's (short) texts.
                if !is_data(&s.expr) {
                    return Err(format!("line {}: only a variable (or a part of one) may be sliced in notification templates", s.span().start_line));
                }
                self.expr(&s.expr)?;
                [&s.start, &s.stop, &s.step].into_iter().flatten().try_for_each(|e| self.expr(e))
            }
            Expr::UnaryOp(u) => self.expr(&u.expr),
            Expr::BinOp(b) => {
                let op = match b.op {
                    BinOpKind::Concat => Some("~"),
                    BinOpKind::Add => Some("+"),
                    BinOpKind::Mul => Some("*"),
                    BinOpKind::Pow => Some("**"),
                    _ => None,
                };
                if let Some(op) = op {
                    let line = b.span().start_line;
                    return Err(format!("line {line}: the `{op}` operator is not available in notification templates (it builds or repeats text: write the text around `{{{{ }}}}` instead)"));
                }
                self.expr(&b.left)?;
                self.expr(&b.right)
            }
            Expr::Compare(c) => {
                self.expr(&c.expr)?;
                c.ops.iter().try_for_each(|o| self.expr(&o.expr))
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr)?;
                self.expr(&i.true_expr)?;
                i.false_expr.iter().try_for_each(|e| self.expr(e))
            }
            Expr::Filter(f) => {
                if !FILTERS.contains(&f.name) {
                    return Err(format!("line {}: unknown filter `{}`: notification templates have {}", f.span().start_line, f.name, FILTERS.join(", ")));
                }
                f.expr.iter().try_for_each(|e| self.expr(e))?;
                self.args(&f.args, f.span().start_line)
            }
            Expr::Test(t) => {
                if !TESTS.contains(&t.name) {
                    return Err(format!("line {}: unknown test `{}`: notification templates have {}", t.span().start_line, t.name, TESTS.join(", ")));
                }
                self.expr(&t.expr)?;
                self.args(&t.args, t.span().start_line)
            }
            // Lists and maps of constants (`reason in ["a", "b"]`, `{"a": "…"}[reason]`): built
            // from the data, they would make comparisons as costly as the data is big, per step.
            Expr::List(l) => constants(&l.items, l.span().start_line),
            Expr::Tuple(t) => constants(&t.items, t.span().start_line),
            Expr::Map(m) => constants(&m.keys, m.span().start_line).and_then(|()| constants(&m.values, m.span().start_line)),
            Expr::Call(c) => {
                let name = match &c.expr {
                    Expr::Var(v) => v.id,
                    Expr::GetAttr(a) => a.name,
                    _ => "…",
                };
                Err(format!("line {}: calling `{name}()` is not available in notification templates (they have no functions; filters are applied with `|`)", c.span().start_line))
            }
        }
    }

    fn args(&self, args: &[ast::CallArg], line: u16) -> Result<(), String> {
        args.iter().try_for_each(|a| match a {
            ast::CallArg::Pos(e) | ast::CallArg::Kwarg(_, e) => self.expr(e),
            _ => Err(format!("line {line}: `*args` and `**kwargs` are not available in notification templates")),
        })
    }

    /// The statement's keyword (`set`, `macro`, …) read from the source, and its line.
    fn keyword_at(&self, offset: Option<(usize, u16)>) -> (&str, u16) {
        let Some((offset, line)) = offset else { return ("…", 0) };
        let rest = self.source.get(offset..).unwrap_or("").trim_start_matches(['{', '%', '-', '+', '~']).trim_start();
        let end = rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(rest.len());
        (&rest[..end], line)
    }
}

/// Where a statement the walk refuses starts (its offset and line).
fn stmt_offset(stmt: &ast::Stmt) -> Option<(usize, u16)> {
    use ast::Stmt;
    let span = match stmt {
        Stmt::WithBlock(s) => s.span(),
        Stmt::Set(s) => s.span(),
        Stmt::SetBlock(s) => s.span(),
        Stmt::AutoEscape(s) => s.span(),
        Stmt::FilterBlock(s) => s.span(),
        Stmt::Block(s) => s.span(),
        Stmt::Import(s) => s.span(),
        Stmt::FromImport(s) => s.span(),
        Stmt::Extends(s) => s.span(),
        Stmt::Include(s) => s.span(),
        Stmt::Macro(s) => s.span(),
        Stmt::CallBlock(s) => s.span(),
        Stmt::Do(s) => s.span(),
        _ => return None,
    };
    Some((span.start_offset as usize, span.start_line))
}

fn constants(items: &[ast::Expr], line: u16) -> Result<(), String> {
    let constant = |e: &ast::Expr| match e {
        ast::Expr::Const(_) => true,
        ast::Expr::UnaryOp(u) => matches!(u.expr, ast::Expr::Const(_)),
        _ => false,
    };
    if items.iter().all(constant) {
        Ok(())
    } else {
        Err(format!("line {line}: lists and maps in notification templates may only hold constants (`[\"a\", \"b\"]`)"))
    }
}

/// A variable, or a part of one (`lines`, `order.lines`, `lines[1:]`): what a loop may run
/// over, so that its length comes from the notification's data, never from the template.
fn is_data(expr: &ast::Expr) -> bool {
    match expr {
        ast::Expr::Var(_) => true,
        ast::Expr::GetAttr(a) => is_data(&a.expr),
        ast::Expr::GetItem(i) => is_data(&i.expr),
        ast::Expr::Slice(s) => is_data(&s.expr),
        _ => false,
    }
}

/// The output of one rendering, refusing to grow past `max` characters: the rendering
/// stops at the first write beyond it.
pub struct Budget {
    bytes: Vec<u8>,
    chars: usize,
    max: usize,
    exceeded: bool,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Budget { bytes: Vec::new(), chars: 0, max, exceeded: false }
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    pub fn into_string(self) -> String {
        // minijinja writes whole `str`s, so the bytes are UTF-8.
        String::from_utf8(self.bytes).expect("rendered text is UTF-8")
    }
}

impl io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Characters are the bytes that do not continue a UTF-8 sequence.
        let chars = buf.iter().filter(|b| (**b & 0xC0) != 0x80).count();
        if self.chars + chars > self.max {
            self.exceeded = true;
            return Err(io::Error::other("output budget exceeded"));
        }
        self.chars += chars;
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use minijinja::context;

    use super::*;

    /// `source` through the walk and the environment, on a few variables, within 1,000
    /// characters; the error as text.
    fn run(source: &str) -> Result<String, String> {
        allowed(source).map_err(|refusal| match refusal {
            Refusal::Syntax(e) => e.to_string(),
            Refusal::Outside(why) => why,
        })?;
        let env = environment();
        let vars = context! { name => "ada lovelace", names => vec!["x", "y"], n => 2.567, nothing => (), detail => "a & b", big => "b".repeat(100_000) };
        let mut out = Budget::new(1_000);
        env.template_from_str(source).and_then(|t| t.render_captured_to(vars, &mut out)).map_err(|e| e.to_string())?;
        Ok(out.into_string())
    }

    #[test]
    fn the_allowed_filters_and_tests_work() {
        let cases = [
            ("{{ name|upper }}", "ADA LOVELACE"),
            ("{{ \"ADA\"|lower }}", "ada"),
            ("{{ name|title }}", "Ada Lovelace"),
            ("{{ name|capitalize }}", "Ada lovelace"),
            ("{{ \" x \"|trim }}", "x"),
            ("{{ names|length }}{{ name|length }}", "212"),
            ("{{ missing|default(\"?\") }}{{ nothing|default(\"-\", true) }}", "?-"),
            ("{{ names|first }}{{ names|last }}", "xy"),
            ("{{ n|round(1) }}", "2.6"),
            ("{{ detail|escape }}", "a &amp; b"),
            ("{{ name|replace(\"a\", \"4\") }}", "4d4 lovel4ce"),
            ("{% if missing is undefined and name is defined and nothing is none and 1 is odd and 2 is even %}ok{% endif %}", "ok"),
        ];
        for (source, expected) in cases {
            assert_eq!(run(source).as_deref(), Ok(expected), "{source}");
        }
        // Every name on the allow-lists is registered and covered here.
        for filter in FILTERS {
            assert!(cases.iter().any(|(source, _)| source.contains(&format!("|{filter}"))), "{filter}");
        }
        for test in TESTS {
            assert!(cases.iter().any(|(source, _)| source.contains(&format!("is {test}"))), "{test}");
        }
    }

    #[test]
    fn minijinja_builtins_beyond_the_allow_lists_are_absent() {
        let env = environment();
        for global in ["debug", "range", "dict", "namespace"] {
            let value = env.render_str(&format!("{{{{ {global} }}}}"), ()).unwrap_err().to_string();
            assert_eq!(value, format!("undefined value: `{global}` is undefined (in <string>:1)"));
            let call = run(&format!("{{{{ {global}() }}}}")).unwrap_err();
            assert!(call.starts_with(&format!("line 1: calling `{global}()` is not available")), "{call}");
        }
        // Refused by the walk, and absent from the environment as well.
        for filter in ["tojson", "pprint", "attr", "map", "items", "dictsort", "join", "indent", "format", "list", "string", "sort", "batch", "select", "safe", "e", "d", "count"] {
            let source = format!("{{{{ names|{filter} }}}}");
            assert!(run(&source).unwrap_err().starts_with(&format!("line 1: unknown filter `{filter}`: notification templates have upper, ")));
            assert!(env.render_str(&source, ()).unwrap_err().to_string().starts_with("unknown filter"), "{filter}");
        }
        for test in ["sameas", "mapping", "string", "filter", "startingwith"] {
            let source = format!("{{% if name is {test} %}}{{% endif %}}");
            assert!(run(&source).unwrap_err().starts_with(&format!("line 1: unknown test `{test}`")));
            assert!(env.render_str(&source, ()).unwrap_err().to_string().starts_with("unknown test"), "{test}");
        }
        // Python-style introspection finds nothing either.
        for source in ["{{ self }}", "{{ names.__class__ }}", "{{ name.__len__ }}", "{{ loop }}", "{{ names.items }}"] {
            assert!(run(source).unwrap_err().starts_with("undefined value"), "{source}");
        }
    }

    #[test]
    fn only_if_and_for_over_the_data_are_allowed() {
        let refused = [
            ("{% set x = 1 %}", "line 1: `{% set %}` is not available in notification templates (only `{% if %}` and `{% for %}` are)"),
            ("\n\n{%- set x %}a{% endset %}", "line 3: `{% set %}`"),
            ("{% with x = 1 %}{% endwith %}", "`{% with %}`"),
            ("{% macro m() %}{% endmacro %}", "`{% macro %}`"),
            ("{% call m() %}{% endcall %}", "`{% call %}`"),
            ("{% filter upper %}a{% endfilter %}", "`{% filter %}`"),
            ("{% include \"x\" %}", "`{% include %}`"),
            ("{% import \"x\" as y %}", "`{% import %}`"),
            ("{% from \"x\" import y %}", "`{% from %}`"),
            ("{% extends \"x\" %}", "`{% extends %}`"),
            ("{% block b %}{% endblock %}", "`{% block %}`"),
            ("{% autoescape true %}{% endautoescape %}", "`{% autoescape %}`"),
            ("{% do names.append(1) %}", "`{% do %}`"),
            ("{% for n in range(3) %}{% endfor %}", "`{% for %}` may only loop over a variable"),
            ("{% for n in [1, 2] %}{% endfor %}", "`{% for %}` may only loop over a variable"),
            ("{% for n in names|first %}{% endfor %}", "`{% for %}` may only loop over a variable"),
            ("{% for n in names recursive %}{% endfor %}", "recursive loops are not available"),
            ("{{ name ~ name }}", "the `~` operator is not available"),
            ("{{ name + name }}", "the `+` operator"),
            ("{{ name * 3 }}", "the `*` operator"),
            ("{{ 2 ** 3 }}", "the `**` operator"),
            ("{{ \"abc\"[1:] }}", "only a variable (or a part of one) may be sliced"),
            ("{{ [name, name] }}", "may only hold constants"),
            ("{{ {\"a\": name} }}", "may only hold constants"),
            ("{{ name|replace(*names) }}", "`*args` and `**kwargs` are not available"),
            ("{% for n in names %}{{ loop.cycle(1, 2) }}{% endfor %}", "calling `cycle()` is not available"),
            ("{% for n in names[debug():] %}{% endfor %}", "calling `debug()`"),
        ];
        for (source, needle) in refused {
            let why = run(source).unwrap_err();
            assert!(why.contains(needle), "{source} → {why}");
        }
        let fine = "{% for n in names if n != \"x\" %}{{ loop.index }}{{ n }}{% else %}none{% endfor %}|{{ names[0] }}{{ name[:3] }}|\
            {{ {\"a\": 1}[\"a\"] }}{{ 1 if name else 2 }}{{ not name }}{{ -1 }}{{ 7 // 2 }}{{ 7 % 2 }}{{ 7 - 2 }}{{ 7 / 2 }}|\
            {{ \"x\" in names }}{{ name == \"ada\" }}{{ names[1:]|length > 0 }}|{% raw %}{{ }}{% endraw %}{# a comment #}";
        assert_eq!(run(fine).as_deref(), Ok("1y|xada|11False-13153.5|TrueFalseTrue|{{ }}"));
    }

    #[test]
    fn filters_are_bounded_in_size_and_in_work() {
        let replace = run("{{ name|replace(\"a\", \"x\" ~ \"\") }}");
        assert!(replace.unwrap_err().contains("`~`"));
        let grow = format!("{{{{ name{} }}}}", "|replace(\"a\", \"aaaaaaaaaa\")".repeat(5));
        assert_eq!(run(&grow).unwrap_err(), "invalid operation: replace would make 30009 characters, more than the 10000 a value may have (in <string>:1)");
        let work = format!("{{{{ big{}|length }}}}", "|lower".repeat(10));
        assert_eq!(run(&work).unwrap_err(), "invalid operation: the filters need more than 1000000 bytes of text, the limit for one rendering (in <string>:1)");
        assert_eq!(run(&format!("{{{{ big{}|length }}}}", "|lower".repeat(8))).as_deref(), Ok("100000"));
    }

    #[test]
    fn the_budget_counts_characters_and_stops_at_the_first_one_too_many() {
        use std::io::Write;
        let mut out = Budget::new(3);
        out.write_all("é".as_bytes()).unwrap();
        out.write_all(b"ab").unwrap();
        assert!(!out.exceeded());
        assert!(out.write_all(b"c").is_err());
        assert!(out.exceeded());
        assert_eq!(out.into_string(), "éab");
        assert_eq!(run("{{ big }}").unwrap_err(), "failed to write output: I/O error during rendering");
    }

    #[test]
    fn nesting_is_limited() {
        let nested = |depth: usize| format!("{}x{}", "{% for n in names[:1] %}".repeat(depth), "{% endfor %}".repeat(depth));
        assert_eq!(run(&nested(10)).as_deref(), Ok("x"));
        assert_eq!(run(&nested(MAX_DEPTH)).unwrap_err(), "invalid operation: recursion limit exceeded (in <string>:1)");
        let ifs = format!("{}x{}", "{% if name %}".repeat(200), "{% endif %}".repeat(200));
        assert_eq!(run(&ifs).unwrap_err(), "syntax error: template exceeds maximum recursion limits (in <string>:1)");
    }
}
