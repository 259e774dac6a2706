//! `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` of one SELECT, inside a READ ONLY transaction
//! that is always rolled back, and the Seq Scan nodes of its plan. Shared by the `seqscan`
//! check and the `explain_seqscan` step (the partitioning window's trigger and post-check).
//!
//! Why this is safe on production: the statement must be one SELECT (or WITH … SELECT with
//! no INSERT/UPDATE/DELETE/MERGE anywhere, no SELECT INTO), checked by a tokenizer that
//! knows literals, quoted names, comments and dollar quotes; the extended query protocol
//! refuses a second statement; READ ONLY refuses any write. But READ ONLY does not stop a
//! function with side effects outside the tables (`pg_terminate_backend`, `pg_cancel_backend`,
//! `nextval`, `dblink`, `lo_export`…), and ANALYZE executes the query. So a plain EXPLAIN
//! (VERBOSE, no ANALYZE: nothing runs) comes first; every name called like a function in
//! the query or in that plan (views and inlined functions expanded), and every operator, is
//! looked up in pg_proc/pg_operator, and if any is VOLATILE (bar a few harmless built-ins)
//! the plain plan is what is judged, and the result says why it was not ANALYZEd.

use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct SeqScan {
    pub relation: String,
    pub actual_rows: f64,
    pub loops: f64,
    pub time_ms: f64,
    pub filter: Option<String>,
}

impl SeqScan {
    pub fn describe(&self) -> String {
        let filter = self
            .filter
            .as_deref()
            .map(|f| format!(", filter {f}"))
            .unwrap_or_default();
        format!(
            "Seq Scan on {} ({} rows × {} loops, {:.1} ms{filter})",
            self.relation, self.actual_rows, self.loops, self.time_ms
        )
    }
}

/// Refuses anything but one SELECT (or WITH … SELECT), before it reaches the server.
pub fn only_select(query: &str) -> Result<(), String> {
    let toks = tokens(query)?;
    let mut words = toks.iter().filter_map(|t| match t {
        Tok::Word(w, false) => Some(w.to_ascii_uppercase()),
        _ => None,
    });
    let first = words.next().unwrap_or_default();
    if first != "SELECT" && first != "WITH" {
        let shown = toks.first().map(Tok::text).unwrap_or_default();
        return Err(format!(
            "only a single SELECT can be explained, not `{shown}`"
        ));
    }
    let semis = toks.iter().position(|t| matches!(t, Tok::Punct(';')));
    if let Some(i) = semis
        && toks[i + 1..].iter().any(|t| !matches!(t, Tok::Punct(';')))
    {
        return Err("only a single statement can be explained (found `;`)".into());
    }
    let writes = [
        "INSERT", "UPDATE", "DELETE", "MERGE", "INTO", "TRUNCATE", "COPY",
    ];
    for w in std::iter::once(first).chain(words) {
        if writes.contains(&w.as_str()) {
            return Err(format!(
                "only a read-only SELECT can be explained: `{w}` changes data (or locks rows)"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A name or keyword; true when it was written in double quotes.
    Word(String, bool),
    Punct(char),
    Op(String),
    /// A literal or a number: never a call.
    Lit,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Word(w, _) => w.clone(),
            Tok::Punct(c) => c.to_string(),
            Tok::Op(o) => o.clone(),
            Tok::Lit => "literal".into(),
        }
    }
}

const OP_CHARS: &str = "+-*/<>=~!@#%^&|`?";

/// A conservative SQL tokenizer: literals ('…', E'…', $tag$…$tag$), quoted names, comments
/// (`--`, nested `/* */`) are skipped as units so that nothing inside them counts.
fn tokens(q: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = q.chars().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '-' && c.get(i + 1) == Some(&'-') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    return Err("an unterminated /* comment".into());
                }
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '\'' || ((ch == 'E' || ch == 'e') && c.get(i + 1) == Some(&'\'')) {
            let escapes = ch != '\'';
            i += if escapes { 2 } else { 1 };
            loop {
                match c.get(i) {
                    None => return Err("an unterminated string literal".into()),
                    Some('\\') if escapes => i += 2,
                    Some('\'') if c.get(i + 1) == Some(&'\'') => i += 2,
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    _ => i += 1,
                }
            }
            out.push(Tok::Lit);
        } else if ch == '"' {
            let mut name = String::new();
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err("an unterminated quoted name".into()),
                    Some('"') if c.get(i + 1) == Some(&'"') => {
                        name.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(x) => {
                        name.push(*x);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Word(name, true));
        } else if ch == '$' {
            // $tag$ … $tag$ (tag empty or a name), or a $1 parameter.
            let mut j = i + 1;
            while j < c.len() && (c[j].is_alphanumeric() || c[j] == '_') {
                j += 1;
            }
            if c.get(j) == Some(&'$') && !c.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                let tag: String = c[i..=j].iter().collect();
                let rest: String = c[j + 1..].iter().collect();
                let Some(end) = rest.find(&tag) else {
                    return Err("an unterminated dollar-quoted string".into());
                };
                i = j + 1 + rest[..end].chars().count() + tag.chars().count();
                out.push(Tok::Lit);
            } else {
                i = j.max(i + 1);
                out.push(Tok::Lit);
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$') {
                i += 1;
            }
            out.push(Tok::Word(c[start..i].iter().collect(), false));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Lit);
        } else if OP_CHARS.contains(ch) {
            let start = i;
            while i < c.len()
                && OP_CHARS.contains(c[i])
                && !(c[i] == '-' && c.get(i + 1) == Some(&'-'))
                && !(c[i] == '/' && c.get(i + 1) == Some(&'*'))
            {
                i += 1;
            }
            out.push(Tok::Op(c[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    Ok(out)
}

/// Every name written like a call (`name (`, `schema.name (`, `"Name" (`) and every
/// operator: what the query could execute. Unquoted names are folded to lower case.
fn calls(text: &str) -> (Vec<String>, Vec<String>) {
    let Ok(toks) = tokens(text) else {
        return (vec![], vec![]);
    };
    let mut names = vec![];
    let mut ops = vec![];
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Word(w, quoted) if toks.get(i + 1) == Some(&Tok::Punct('(')) => {
                names.push(if *quoted { w.clone() } else { w.to_lowercase() })
            }
            Tok::Op(o) => ops.push(o.clone()),
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    ops.sort();
    ops.dedup();
    (names, ops)
}

/// Volatile built-ins that read a clock or a random source and change nothing.
const HARMLESS_VOLATILE: &[&str] = &["random", "clock_timestamp", "timeofday", "gen_random_uuid"];

/// What a plan was judged from.
pub struct Explained {
    pub scans: Vec<SeqScan>,
    pub plan: Value,
    /// Why the query was only planned, not run (EXPLAIN without ANALYZE).
    pub not_analyzed: Option<String>,
}

pub async fn explain(
    client: &mut tokio_postgres::Client,
    query: &str,
    timeout: Duration,
) -> anyhow::Result<Explained> {
    only_select(query).map_err(|e| anyhow!(e))?;
    let q = |e: tokio_postgres::Error| anyhow!("{}", crate::infra::postgres::describe(&e));
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(q)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        timeout.as_millis()
    ))
    .await
    .map_err(q)?;
    let body = query.trim().trim_end_matches(';');
    let result = async {
        // Planning only: nothing in the query runs.
        let planned: Value = tx
            .query_one(format!("EXPLAIN (VERBOSE, FORMAT JSON) {body}").as_str(), &[])
            .await
            .map_err(|e| anyhow!("EXPLAIN failed: {}", crate::infra::postgres::describe(&e)))?
            .get(0);
        let (mut names, mut ops) = calls(body);
        let mut texts = vec![];
        plan_strings(&planned, &mut texts);
        for t in texts {
            let (n, o) = calls(&t);
            names.extend(n);
            ops.extend(o);
        }
        names.sort();
        names.dedup();
        ops.sort();
        ops.dedup();
        let volatile: Vec<String> = tx
            .query(
                "SELECT DISTINCT p.oid::regprocedure::text AS f FROM pg_proc p \
                 JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE p.provolatile = 'v' AND p.proname = ANY($1) \
                 AND NOT (n.nspname = 'pg_catalog' AND p.proname = ANY($3)) \
                 UNION \
                 SELECT DISTINCT o.oid::regoperator::text || ' (' || p.proname || ')' FROM pg_operator o \
                 JOIN pg_proc p ON p.oid = o.oprcode \
                 WHERE p.provolatile = 'v' AND o.oprname = ANY($2) ORDER BY 1",
                &[&names, &ops, &HARMLESS_VOLATILE],
            )
            .await
            .map_err(|e| anyhow!("looking up the query's functions: {}", crate::infra::postgres::describe(&e)))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !volatile.is_empty() {
            return Ok(Explained {
                scans: vec![],
                plan: planned,
                not_analyzed: Some(format!(
                    "not ANALYZEd: the query calls volatile {} (it could change something outside the tables, which READ ONLY does not stop); judged from the plan without running it",
                    volatile.join(", ")
                )),
            });
        }
        let plan: Value = tx
            .query_one(
                format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {body}").as_str(),
                &[],
            )
            .await
            .map_err(|e| anyhow!("EXPLAIN failed: {}", crate::infra::postgres::describe(&e)))?
            .get(0);
        Ok::<_, anyhow::Error>(Explained {
            scans: vec![],
            plan,
            not_analyzed: None,
        })
    }
    .await;
    let _ = tx.rollback().await;
    let mut e = result?;
    let root = e
        .plan
        .get(0)
        .and_then(|p| p.get("Plan"))
        .ok_or_else(|| anyhow!("EXPLAIN returned no plan"))?;
    let mut scans = vec![];
    walk(root, &mut scans);
    e.scans = scans;
    Ok(e)
}

/// Every string inside a plan (Output, Filter, Index Cond, Function Call, …).
fn plan_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| plan_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| plan_strings(x, out)),
        _ => {}
    }
}

fn walk(node: &Value, out: &mut Vec<SeqScan>) {
    if node["Node Type"] == "Seq Scan" {
        out.push(SeqScan {
            relation: node["Relation Name"].as_str().unwrap_or("?").to_owned(),
            // Without ANALYZE: the planner's estimate.
            actual_rows: node["Actual Rows"]
                .as_f64()
                .or_else(|| node["Plan Rows"].as_f64())
                .unwrap_or(0.0),
            loops: node["Actual Loops"].as_f64().unwrap_or(1.0),
            time_ms: node["Actual Total Time"].as_f64().unwrap_or(0.0),
            filter: node["Filter"].as_str().map(str::to_owned),
        });
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        walk(child, out);
    }
}

/// Scans on one of `tables`, or on one of their partitions (`<table>_…`).
pub fn on_tables<'a>(scans: &'a [SeqScan], tables: &[String]) -> Vec<&'a SeqScan> {
    scans
        .iter()
        .filter(|s| {
            tables.iter().any(|t| {
                s.relation.eq_ignore_ascii_case(t)
                    || s.relation
                        .to_ascii_lowercase()
                        .starts_with(&format!("{}_", t.to_ascii_lowercase()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_selects() {
        assert!(only_select("SELECT 1").is_ok());
        assert!(only_select("  -- a comment\n with x as (select 1) select * from x;").is_ok());
        assert!(only_select("select ';' as semi").is_ok());
        assert!(
            only_select("DELETE FROM hfj_resource")
                .unwrap_err()
                .contains("`DELETE`")
        );
        assert!(only_select("select 1; drop table hfj_resource").is_err());
        assert!(only_select("EXPLAIN select 1").is_err());
        assert!(only_select("select 1;").is_ok());
        assert!(only_select("select 'a;b', $$x;y$$, \"c;d\" from t /* ; */").is_ok());
        assert!(only_select("select 'it''s; fine'").is_ok());
        assert!(only_select("select E'\\'; drop table t").is_err());
        let cte = only_select("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
        assert!(cte.unwrap_err().contains("`DELETE`"));
        assert!(only_select("with u as (update t set a = 1 returning a) select 1").is_err());
        assert!(only_select("select * into copy_of from t").is_err());
        assert!(only_select("select * from t for update").is_err());
        assert!(only_select("select 'delete', \"update\" from t").is_ok());
        assert!(only_select("select 'unterminated").is_err());
    }

    #[test]
    fn calls_are_found_outside_literals_and_comments() {
        let (names, ops) = calls(
            "SELECT pg_catalog.PG_TERMINATE_BACKEND (pid), \"MyFn\"(1), 'nextval(x)' \
             FROM pg_stat_activity -- lo_export(1)\n WHERE a >= 1 AND b ~~ 'x' /* f() */",
        );
        assert_eq!(names, ["MyFn", "pg_terminate_backend"]);
        assert_eq!(ops, [">=", "~~"]);
        let (names, _) = calls("select count(*) from t where x in (select 1)");
        assert_eq!(names, ["count", "in"]);
    }
}
