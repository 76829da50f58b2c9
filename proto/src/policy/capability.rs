//! Capability expressions of a ServicePolicy (`all(midtrans, bbd)`, `any(smtp, whatsapp)`,
//! `not(x)`, a bare dependency name): parsing and evaluation against dependency health.
//!
//! The grammar is small on purpose, so that a capability reads like a sentence in the policy:
//!
//! ```text
//! expr := name | all(expr, ...) | any(expr, ...) | not(expr)
//! name := [A-Za-z0-9_.-]+        (a dependency declared in spec.dependencies)
//! ```

use std::fmt;

/// How deep `all`/`any`/`not` may nest. Expressions arrive over the API, so the recursive
/// parser must not be driven into a stack overflow; no sensible capability needs more.
const MAX_DEPTH: usize = 32;

/// A parsed capability expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CapabilityExpr {
    /// Holds while the named dependency is healthy.
    Dep(String),
    /// Holds while every operand holds.
    All(Vec<CapabilityExpr>),
    /// Holds while at least one operand holds.
    Any(Vec<CapabilityExpr>),
    /// Holds while the operand does not.
    Not(Box<CapabilityExpr>),
}

impl CapabilityExpr {
    /// Parses an expression; the error says what was expected where.
    pub fn parse(text: &str) -> Result<CapabilityExpr, String> {
        if text.trim().is_empty() {
            return Err(format!(
                "must be an expression such as \"all(a, b)\", \"any(a, b)\", \"not(a)\" or a dependency name, got {text:?}"
            ));
        }
        let mut p = Parser {
            text,
            chars: text.char_indices().collect(),
            pos: 0,
        };
        let expr = p.expr(0)?;
        p.skip_space();
        match p.peek() {
            None => Ok(expr),
            Some(c) => Err(p.unexpected(c, "the end of the expression")),
        }
    }

    /// Whether the capability holds, given which dependencies are healthy.
    pub fn eval(&self, healthy: &dyn Fn(&str) -> bool) -> bool {
        match self {
            CapabilityExpr::Dep(name) => healthy(name),
            CapabilityExpr::All(xs) => xs.iter().all(|x| x.eval(healthy)),
            CapabilityExpr::Any(xs) => xs.iter().any(|x| x.eval(healthy)),
            CapabilityExpr::Not(x) => !x.eval(healthy),
        }
    }

    /// Every dependency name the expression mentions, in order of appearance (repeats kept).
    pub fn dependencies(&self) -> Vec<&str> {
        fn walk<'a>(e: &'a CapabilityExpr, out: &mut Vec<&'a str>) {
            match e {
                CapabilityExpr::Dep(name) => out.push(name),
                CapabilityExpr::All(xs) | CapabilityExpr::Any(xs) => {
                    xs.iter().for_each(|x| walk(x, out))
                }
                CapabilityExpr::Not(x) => walk(x, out),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

/// The canonical text: `all(a, any(b, c))`; parsing it gives the same expression back.
impl fmt::Display for CapabilityExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, name: &str, xs: &[CapabilityExpr]| {
            write!(f, "{name}(")?;
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{x}")?;
            }
            f.write_str(")")
        };
        match self {
            CapabilityExpr::Dep(name) => f.write_str(name),
            CapabilityExpr::All(xs) => list(f, "all", xs),
            CapabilityExpr::Any(xs) => list(f, "any", xs),
            CapabilityExpr::Not(x) => write!(f, "not({x})"),
        }
    }
}

impl std::str::FromStr for CapabilityExpr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CapabilityExpr::parse(s)
    }
}

/// A recursive-descent parser over the characters of one expression.
struct Parser<'a> {
    text: &'a str,
    chars: Vec<(usize, char)>,
    /// Index into `chars` of the next character.
    pos: usize,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|&(_, c)| c)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// "unexpected `c` at position N in `text`; expected …", positions counted from 1.
    fn unexpected(&self, c: char, expected: &str) -> String {
        format!(
            "unexpected {:?} at position {} in {:?}; expected {expected}",
            c.to_string(),
            self.pos + 1,
            self.text
        )
    }

    fn unexpected_end(&self, expected: &str) -> String {
        format!("unexpected end of {:?}; expected {expected}", self.text)
    }

    fn expr(&mut self, depth: usize) -> Result<CapabilityExpr, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nests deeper than {MAX_DEPTH} levels"));
        }
        self.skip_space();
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(match self.peek() {
                Some(c) => self.unexpected(c, "a dependency name, all(, any( or not("),
                None => self.unexpected_end("a dependency name, all(, any( or not("),
            });
        }
        let name: String = self.chars[start..self.pos]
            .iter()
            .map(|&(_, c)| c)
            .collect();
        self.skip_space();
        if self.peek() != Some('(') {
            return Ok(CapabilityExpr::Dep(name));
        }
        self.pos += 1;
        let args = self.args(depth)?;
        match name.as_str() {
            "all" => Ok(CapabilityExpr::All(args)),
            "any" => Ok(CapabilityExpr::Any(args)),
            "not" => match <[CapabilityExpr; 1]>::try_from(args) {
                Ok([arg]) => Ok(CapabilityExpr::Not(Box::new(arg))),
                Err(args) => Err(format!(
                    "not() takes exactly one operand, got {} in {:?}",
                    args.len(),
                    self.text
                )),
            },
            other => Err(format!(
                "unknown function {other:?} in {:?}; expected all, any or not",
                self.text
            )),
        }
    }

    /// The operands after an opening parenthesis, up to and including the closing one.
    fn args(&mut self, depth: usize) -> Result<Vec<CapabilityExpr>, String> {
        let mut args = vec![self.expr(depth + 1)?];
        loop {
            self.skip_space();
            match self.peek() {
                Some(',') => {
                    self.pos += 1;
                    args.push(self.expr(depth + 1)?);
                }
                Some(')') => {
                    self.pos += 1;
                    return Ok(args);
                }
                Some(c) => return Err(self.unexpected(c, "\",\" or \")\"")),
                None => return Err(self.unexpected_end("\",\" or \")\"")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CapabilityExpr::{self, All, Any, Dep, Not};

    fn dep(name: &str) -> CapabilityExpr {
        Dep(name.to_string())
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(CapabilityExpr::parse("midtrans"), Ok(dep("midtrans")));
        assert_eq!(
            CapabilityExpr::parse("all(midtrans, bbd)"),
            Ok(All(vec![dep("midtrans"), dep("bbd")]))
        );
        assert_eq!(
            CapabilityExpr::parse("  any( smtp ,whatsapp )  "),
            Ok(Any(vec![dep("smtp"), dep("whatsapp")]))
        );
        assert_eq!(
            CapabilityExpr::parse("not(user-service)"),
            Ok(Not(Box::new(dep("user-service"))))
        );
        assert_eq!(
            CapabilityExpr::parse("all(db, any(smtp, not(sms.notify)))"),
            Ok(All(vec![
                dep("db"),
                Any(vec![dep("smtp"), Not(Box::new(dep("sms.notify")))])
            ]))
        );
        assert_eq!(CapabilityExpr::parse("all(a)"), Ok(All(vec![dep("a")])));
        // A dependency may be called like a function name, as long as it is not called.
        assert_eq!(CapabilityExpr::parse("any"), Ok(dep("any")));
    }

    #[test]
    fn display_round_trips() {
        for text in ["a", "all(a, b)", "any(a, not(b), all(c, d))"] {
            let expr = CapabilityExpr::parse(text).expect("parses");
            assert_eq!(expr.to_string(), text);
            assert_eq!(text.parse::<CapabilityExpr>(), Ok(expr));
        }
    }

    #[test]
    fn errors_say_what_was_expected_where() {
        let err = |t: &str| CapabilityExpr::parse(t).expect_err(t);
        assert_eq!(
            err(""),
            "must be an expression such as \"all(a, b)\", \"any(a, b)\", \"not(a)\" or a dependency name, got \"\""
        );
        assert_eq!(
            err("all(a, b"),
            "unexpected end of \"all(a, b\"; expected \",\" or \")\""
        );
        assert_eq!(
            err("all(a b)"),
            "unexpected \"b\" at position 7 in \"all(a b)\"; expected \",\" or \")\""
        );
        assert_eq!(
            err("all()"),
            "unexpected \")\" at position 5 in \"all()\"; expected a dependency name, all(, any( or not("
        );
        assert_eq!(
            err("all(a,)"),
            "unexpected \")\" at position 7 in \"all(a,)\"; expected a dependency name, all(, any( or not("
        );
        assert_eq!(
            err("all(a) b"),
            "unexpected \"b\" at position 8 in \"all(a) b\"; expected the end of the expression"
        );
        assert_eq!(
            err("both(a, b)"),
            "unknown function \"both\" in \"both(a, b)\"; expected all, any or not"
        );
        assert_eq!(
            err("not(a, b)"),
            "not() takes exactly one operand, got 2 in \"not(a, b)\""
        );
        assert_eq!(
            err("a && b"),
            "unexpected \"&\" at position 3 in \"a && b\"; expected the end of the expression"
        );
        let deep = format!("{}a{}", "not(".repeat(40), ")".repeat(40));
        assert_eq!(err(&deep), "nests deeper than 32 levels");
    }

    #[test]
    fn evaluates_against_health() {
        let expr = CapabilityExpr::parse("all(db, any(smtp, whatsapp), not(maintenance))")
            .expect("parses");
        let with = |up: &'static [&'static str]| move |name: &str| up.contains(&name);
        assert!(expr.eval(&with(&["db", "smtp"])));
        assert!(expr.eval(&with(&["db", "whatsapp"])));
        assert!(!expr.eval(&with(&["db"])));
        assert!(!expr.eval(&with(&["smtp", "whatsapp"])));
        assert!(!expr.eval(&with(&["db", "smtp", "maintenance"])));
        assert_eq!(
            expr.dependencies(),
            vec!["db", "smtp", "whatsapp", "maintenance"]
        );
    }
}
