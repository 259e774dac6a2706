//! The Prometheus text exposition format (0.0.4), as Spring Boot's `/actuator/prometheus`
//! serves it: `# HELP` / `# TYPE` lines, other `#` comments, and samples
//! `name{label="value",…} value [timestamp_ms]`. Label values unescape `\\`, `\"` and `\n`;
//! values may be `NaN`, `+Inf`, `-Inf` or use exponents. Anything else is an error naming
//! the line, so a truncated or foreign page is never read as "no problem".

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written (names are unique within a sample).
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the exporter gave one.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name{k="v",…}` with labels sorted, escaped as written on the wire: a stable key for
    /// one series across scrapes.
    pub fn series(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let mut labels: Vec<_> = self.labels.iter().collect();
        labels.sort();
        let inner: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        format!("{}{{{}}}", self.name, inner.join(","))
    }
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Metric family → `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub types: BTreeMap<String, String>,
    pub help: BTreeMap<String, String>,
}

impl Exposition {
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

const TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];

pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let err = |message: String| ParseError {
            line: i + 1,
            message,
        };
        let trimmed = line.trim_matches([' ', '\t']);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            meta(comment, &mut out).map_err(err)?;
            continue;
        }
        out.samples.push(sample(trimmed).map_err(err)?);
    }
    Ok(out)
}

/// `# HELP name text`, `# TYPE name type`; any other comment is ignored.
fn meta(comment: &str, out: &mut Exposition) -> Result<(), String> {
    let rest = comment.trim_start_matches([' ', '\t']);
    let (keyword, rest) = split_token(rest);
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(());
    }
    let (name, rest) = split_token(rest);
    if name.is_empty() {
        return Err(format!("`# {keyword}` without a metric name"));
    }
    if !is_metric_name(name) {
        return Err(format!("`{name}` is not a valid metric name"));
    }
    if keyword == "HELP" {
        out.help.insert(name.into(), unescape_help(rest));
        return Ok(());
    }
    let ty = rest.trim_matches([' ', '\t']);
    if !TYPES.contains(&ty) {
        return Err(format!(
            "`# TYPE {name}` has type `{ty}`; expected one of {}",
            TYPES.join(", ")
        ));
    }
    if out.types.insert(name.into(), ty.into()).is_some() {
        return Err(format!("second `# TYPE` line for `{name}`"));
    }
    Ok(())
}

fn sample(line: &str) -> Result<Sample, String> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..end];
    if !is_metric_name(name) {
        let shown: String = line.chars().take(40).collect();
        return Err(format!("expected a metric name at `{shown}`"));
    }
    let mut rest = line[end..].trim_start_matches([' ', '\t']);
    let mut labels = vec![];
    if let Some(r) = rest.strip_prefix('{') {
        rest = label_set(r, &mut labels)?;
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (value, rest) = split_token(rest);
    if value.is_empty() {
        return Err(format!("`{name}` has no value"));
    }
    let value = parse_value(value).ok_or_else(|| format!("`{value}` is not a number"))?;
    let (ts, rest) = split_token(rest);
    let timestamp_ms = if ts.is_empty() {
        None
    } else {
        Some(
            ts.parse::<i64>()
                .map_err(|_| format!("`{ts}` is not a timestamp (integer milliseconds)"))?,
        )
    };
    if !rest.trim_matches([' ', '\t']).is_empty() {
        return Err(format!(
            "unexpected `{}` after the value",
            rest.trim_matches([' ', '\t'])
        ));
    }
    Ok(Sample {
        name: name.into(),
        labels,
        value,
        timestamp_ms,
    })
}

/// After `{`: `name="value"` pairs separated by commas (a trailing comma is allowed), then
/// `}`. Returns what follows the `}`.
fn label_set<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        let name = &s[..end];
        if !is_label_name(name) {
            return Err(match s.chars().next() {
                None => "unterminated label set (no `}`)".into(),
                Some(c) => format!("expected a label name or `}}` at `{c}`"),
            });
        }
        s = s[end..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after label `{name}`"))?;
        s = s.trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label `{name}` must be in double quotes"))?;
        let (value, r) = quoted(s).map_err(|e| format!("label `{name}`: {e}"))?;
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label `{name}` appears twice"));
        }
        labels.push((name.into(), value));
        s = r.trim_start_matches([' ', '\t']);
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(match s.chars().next() {
                None => "unterminated label set (no `}`)".into(),
                Some(c) => format!("expected `,` or `}}` after label `{name}`, found `{c}`"),
            });
        }
    }
}

/// After the opening quote: the unescaped value and what follows the closing quote.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, other)) => return Err(format!("unknown escape `\\{other}`")),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("unterminated quoted value".into())
}

/// HELP text escapes only `\\` and `\n`; anything else after a backslash stays as written.
fn unescape_help(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.trim_start_matches([' ', '\t']).chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Go's ParseFloat as the exporters write it: decimals, exponents, `NaN`, `+Inf`, `-Inf`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => return Some(f64::NAN),
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust also accepts "inf", "infinity" and "nan" in any case; the format does not.
    if s.bytes()
        .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E')
    {
        return None;
    }
    s.parse().ok()
}

fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a Spring Boot 3 / Micrometer page (old client: trailing commas).
    const SPRING: &str = r#"# HELP hikaricp_connections_pending Pending threads
# TYPE hikaricp_connections_pending gauge
hikaricp_connections_pending{pool="HikariPool-1",} 0.0
# HELP hikaricp_connections_timeout_total Connection timeout total count
# TYPE hikaricp_connections_timeout_total counter
hikaricp_connections_timeout_total{pool="HikariPool-1",} 3.0
# HELP jvm_memory_used_bytes The amount of used memory
# TYPE jvm_memory_used_bytes gauge
jvm_memory_used_bytes{area="heap",id="G1 Survivor Space",} 4194304.0
jvm_memory_used_bytes{area="heap",id="G1 Old Gen",} 1.2345678E8
jvm_memory_used_bytes{area="nonheap",id="Metaspace",} 1.6E8
# HELP jvm_memory_max_bytes The maximum amount of memory in bytes that can be used for memory management
# TYPE jvm_memory_max_bytes gauge
jvm_memory_max_bytes{area="heap",id="G1 Survivor Space",} -1.0
jvm_memory_max_bytes{area="heap",id="G1 Old Gen",} 4.294967296E9
# HELP http_server_requests_seconds_max
# TYPE http_server_requests_seconds_max gauge
http_server_requests_seconds_max{error="none",exception="none",method="POST",outcome="SUCCESS",status="200",uri="/fhir/$validate",} 41.25
# HELP process_uptime_seconds The uptime of the Java virtual machine
# TYPE process_uptime_seconds gauge
process_uptime_seconds 86400.123
# HELP http_server_requests_seconds  
# TYPE http_server_requests_seconds histogram
http_server_requests_seconds_bucket{method="GET",uri="/fhir/Patient",le="0.5",} 10.0
http_server_requests_seconds_bucket{method="GET",uri="/fhir/Patient",le="+Inf",} 12.0
"#;

    #[test]
    fn spring_boot_page() {
        let e = parse(SPRING).unwrap();
        assert_eq!(e.samples.len(), 11);
        assert_eq!(e.types["hikaricp_connections_timeout_total"], "counter");
        assert_eq!(e.types["http_server_requests_seconds"], "histogram");
        assert_eq!(e.help["jvm_memory_used_bytes"], "The amount of used memory");
        let h = parse("# HELP h a\\\\b\\nc \\d\n").unwrap();
        assert_eq!(h.help["h"], "a\\b\nc \\d");
        let old: Vec<_> = e.named("jvm_memory_used_bytes").collect();
        assert_eq!(old[1].value, 1.2345678e8);
        assert_eq!(old[1].label("id"), Some("G1 Old Gen"));
        let slow = e.named("http_server_requests_seconds_max").next().unwrap();
        assert_eq!(slow.label("uri"), Some("/fhir/$validate"));
        assert_eq!(slow.value, 41.25);
        let up = e.named("process_uptime_seconds").next().unwrap();
        assert!(up.labels.is_empty() && up.timestamp_ms.is_none());
        let inf = &e.samples[10];
        assert_eq!(inf.label("le"), Some("+Inf"));
        assert_eq!(
            inf.series(),
            r#"http_server_requests_seconds_bucket{le="+Inf",method="GET",uri="/fhir/Patient"}"#
        );
    }

    #[test]
    fn escapes_special_values_and_timestamps() {
        let text = "# a free comment\n\
                    # TYPE x untyped\n\
                    x{path=\"C:\\\\dir\",msg=\"say \\\"hi\\\"\\nbye\"} NaN 1712345678901\n\
                    x{k=\"a\"} +Inf\n\
                    x{k=\"b\"} -Inf -5\n\
                    x{ k = \"c\" , } 1.5e-3\r\n\
                    x_total{k=\"}\"} 7e2\n\
                    \t\n";
        let e = parse(text).unwrap();
        let s = &e.samples;
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].label("path"), Some(r"C:\dir"));
        assert_eq!(s[0].label("msg"), Some("say \"hi\"\nbye"));
        assert!(s[0].value.is_nan());
        assert_eq!(s[0].timestamp_ms, Some(1_712_345_678_901));
        assert_eq!(s[1].value, f64::INFINITY);
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        assert_eq!(s[2].timestamp_ms, Some(-5));
        assert_eq!(s[3].value, 0.0015);
        assert_eq!(s[4].label("k"), Some("}"));
        assert_eq!(s[4].value, 700.0);
        // The series key escapes again, so it round-trips.
        assert_eq!(s[0].series(), r#"x{msg="say \"hi\"\nbye",path="C:\\dir"}"#);
        // Newer clients (no trailing comma, no labels) and an empty page.
        assert_eq!(parse("up 1\n").unwrap().samples[0].value, 1.0);
        assert!(parse("").unwrap().samples.is_empty());
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        let cases: &[(&str, usize, &str)] = &[
            ("ok 1\nbad{pool=\"x\" 1\n", 2, "expected `,` or `}`"),
            ("a 1\nb 2\nc{pool=\"x} 1\n", 3, "unterminated quoted value"),
            ("x{pool=unquoted} 1", 1, "double quotes"),
            ("x{p=\"a\\t\"} 1", 1, "unknown escape `\\t`"),
            ("x{p=\"a\",p=\"b\"} 1", 1, "appears twice"),
            ("x{1p=\"a\"} 1", 1, "label name"),
            ("x 1.2.3", 1, "not a number"),
            ("x inf", 1, "not a number"),
            ("x", 1, "has no value"),
            ("x 1 12.5", 1, "not a timestamp"),
            ("x 1 2 3", 1, "unexpected `3`"),
            ("\n\n9x 1", 3, "metric name"),
            (
                "<html><body>Whitelabel Error Page</body></html>",
                1,
                "metric name",
            ),
            ("# TYPE x gauge\n# TYPE x gauge\nx 1", 2, "second `# TYPE`"),
            ("# TYPE x thing", 1, "expected one of"),
            ("# HELP", 1, "without a metric name"),
            ("x{p=\"a\"", 1, "unterminated label set"),
        ];
        for (text, line, want) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.to_string().contains(want), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")));
        }
    }
}
