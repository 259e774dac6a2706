//! TOML text → a raw tree that keeps the byte span of every key and value, so that every
//! later error (unknown key, bad variable, wrong type) can point at its exact location.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::diagnostic::Diagnostic;

#[derive(Debug, Clone)]
pub struct Node {
    pub span: Range<usize>,
    pub val: Val,
}

#[derive(Debug, Clone)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub span: Range<usize>,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn entries(&self) -> &[(Key, Node)] {
        match &self.val {
            Val::Table(t) => t,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.val {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self.val {
            Val::Str(_) => "string",
            Val::Int(_) => "integer",
            Val::Float(_) => "float",
            Val::Bool(_) => "boolean",
            Val::Datetime(_) => "datetime",
            Val::Array(_) => "array",
            Val::Table(_) => "table",
        }
    }

    /// The plain TOML value, for typed deserialization after validation.
    pub fn to_toml(&self) -> toml::Value {
        match &self.val {
            Val::Str(s) => toml::Value::String(s.clone()),
            Val::Int(i) => toml::Value::Integer(*i),
            Val::Float(f) => toml::Value::Float(*f),
            Val::Bool(b) => toml::Value::Boolean(*b),
            Val::Datetime(d) => toml::Value::String(d.clone()),
            Val::Array(a) => toml::Value::Array(a.iter().map(Node::to_toml).collect()),
            Val::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_toml()))
                    .collect(),
            ),
        }
    }
}

pub fn parse(text: &str) -> Result<Node, Vec<Diagnostic>> {
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(errors
            .into_iter()
            .map(|e| {
                let span = e.span().unwrap_or(0..0);
                Diagnostic::new(format!("invalid TOML: {}", e.message().trim()), span)
            })
            .collect());
    }
    let span = root.span();
    Ok(Node {
        span,
        val: table(root.into_inner(), text),
    })
}

fn table(t: DeTable<'_>, text: &str) -> Val {
    let mut entries: Vec<(Key, Node)> = t
        .into_iter()
        .map(|(k, v)| {
            let key = Key {
                name: k.get_ref().to_string(),
                span: k.span(),
            };
            (key, node(v.span(), v.into_inner(), text))
        })
        .collect();
    // Keep document order, so "every error at once" is also "in reading order".
    entries.sort_by_key(|(k, _)| k.span.start);
    Val::Table(entries)
}

fn node(span: Range<usize>, v: DeValue<'_>, text: &str) -> Node {
    let val = match v {
        DeValue::String(s) => Val::Str(s.into_owned()),
        DeValue::Integer(i) => {
            let n = i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).unwrap_or(0);
            Val::Int(n)
        }
        DeValue::Float(f) => Val::Float(f.as_str().replace('_', "").parse().unwrap_or(0.0)),
        DeValue::Boolean(b) => Val::Bool(b),
        DeValue::Datetime(d) => Val::Datetime(d.to_string()),
        DeValue::Array(a) => Val::Array(
            a.into_iter()
                .map(|e| node(e.span(), e.into_inner(), text))
                .collect(),
        ),
        DeValue::Table(t) => table(t, text),
    };
    Node { span, val }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_into_the_text() {
        let text = "name = \"x\"\n[[steps]]\nid = \"a\"\nkind = \"exec\"\n";
        let root = parse(text).unwrap();
        let steps = root.get("steps").unwrap();
        let Val::Array(items) = &steps.val else {
            panic!()
        };
        let kind = items[0].get("kind").unwrap();
        assert_eq!(&text[kind.span.clone()], "\"exec\"");
        assert_eq!(kind.as_str(), Some("exec"));
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let errs = parse("name = \n").unwrap_err();
        assert!(!errs.is_empty());
        assert!(errs[0].message.starts_with("invalid TOML"));
    }
}
