//! A line-based edit of HAPI's `application.yaml`: in the `hapi.fhir.implementationguides`
//! entry of one IG, replace the values of `packageUrl` and `version` and nothing else —
//! indentation, quoting style, trailing comments and line endings stay as they were.
//!
//! Why no YAML library: a parse + re-serialise round trip would reformat the file, and the
//! operators diff it. The subset understood is block-style YAML as HAPI ships it: nested
//! mappings by indentation, and entries either as mapping keys or as `- ` list items.
//! Anything else (flow style, anchors on these keys) is reported as "entry not found".

/// One significant line: its index, indent (a `- ` counts as indent), key and raw value.
struct Line<'a> {
    idx: usize,
    indent: usize,
    item: bool,
    key: &'a str,
    value: &'a str,
}

fn body(line: &str) -> &str {
    line.trim_end_matches(['\n', '\r'])
}

fn parse_line(idx: usize, raw: &str) -> Option<Line<'_>> {
    let b = body(raw);
    let content = b.trim_start_matches(' ');
    if content.is_empty() || content.starts_with('#') {
        return None;
    }
    let mut indent = b.len() - content.len();
    let (item, content) = match content.strip_prefix("- ") {
        Some(rest) => {
            let rest_trim = rest.trim_start_matches(' ');
            indent += 2 + rest.len() - rest_trim.len();
            (true, rest_trim)
        }
        None => (false, content),
    };
    let (key, value) = if let Some(k) = content.strip_suffix(':') {
        (k, "")
    } else {
        let pos = content.find(": ")?;
        (&content[..pos], &content[pos + 2..])
    };
    Some(Line {
        idx,
        indent,
        item,
        key: key.trim(),
        value,
    })
}

/// The value without quotes or a trailing comment.
fn scalar(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q)
            && let Some(end) = rest.find(q)
        {
            return rest[..end].to_owned();
        }
    }
    v.split(" #").next().unwrap_or("").trim().to_owned()
}

/// Line indices of `packageUrl` and `version` in the entry for IG `id`.
fn locate(lines: &[&str], id: &str) -> Result<(usize, usize), String> {
    let parsed: Vec<Line> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| parse_line(i, l))
        .collect();
    let mut stack: Vec<(usize, &str)> = vec![];
    let mut ig_at = None;
    for (n, l) in parsed.iter().enumerate() {
        while stack.last().is_some_and(|(ind, _)| *ind >= l.indent) {
            stack.pop();
        }
        let path: Vec<&str> = stack.iter().map(|(_, k)| *k).collect();
        if path == ["hapi", "fhir"] && l.key == "implementationguides" && l.value.is_empty() {
            ig_at = Some(n);
            break;
        }
        if l.value.is_empty() {
            stack.push((l.indent, l.key));
        }
    }
    let n = ig_at.ok_or("no `hapi.fhir.implementationguides` block")?;
    let base = parsed[n].indent;
    let block: Vec<&Line> = parsed[n + 1..]
        .iter()
        .take_while(|l| l.indent > base)
        .collect();
    let Some(&first) = block.first() else {
        return Err("`hapi.fhir.implementationguides` is empty".into());
    };
    // Entries start at the block's first indent (mapping keys) or at each list item.
    let entry_indent = first.indent;
    let mut entries: Vec<Vec<&Line>> = vec![];
    for l in block {
        let starts = if first.item {
            l.item && l.indent == entry_indent
        } else {
            l.indent == entry_indent
        };
        if starts || entries.is_empty() {
            entries.push(vec![]);
        }
        entries.last_mut().expect("pushed").push(l);
    }
    let mut found = vec![];
    for e in &entries {
        let field = |k: &str| e.iter().find(|l| l.key == k && !l.value.is_empty());
        let url = field("packageUrl");
        let is_ours = field("name").is_some_and(|l| scalar(l.value) == id)
            || url.is_some_and(|l| {
                let u = scalar(l.value);
                let file = u.rsplit(['/', ':']).next().unwrap_or("");
                file.starts_with(&format!("{id}-"))
            });
        if is_ours {
            let url = url.ok_or(format!("the entry for {id} has no `packageUrl`"))?;
            let ver = field("version").ok_or(format!("the entry for {id} has no `version`"))?;
            found.push((url.idx, ver.idx));
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no entry for {id} under `hapi.fhir.implementationguides`"
        )),
        _ => Err(format!(
            "{} entries for {id} under `hapi.fhir.implementationguides`",
            found.len()
        )),
    }
}

/// Current `(packageUrl, version)` of IG `id`.
pub fn values(text: &str, id: &str) -> Result<(String, String), String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let (u, v) = locate(&lines, id)?;
    let val = |i: usize| parse_line(i, lines[i]).map_or(String::new(), |l| scalar(l.value));
    Ok((val(u), val(v)))
}

/// Replaces one line's value, keeping its quote style, comment and line ending.
fn replace_value(line: &str, new: &str) -> String {
    let b = body(line);
    let ending = &line[b.len()..];
    let Some(pos) = b.find(": ") else {
        return line.to_owned();
    };
    let (head, v) = b.split_at(pos + 2);
    let lead = &v[..v.len() - v.trim_start().len()];
    let v = v.trim_start();
    let (quoted, rest) = match v.chars().next() {
        Some(q @ ('"' | '\'')) => match v[1..].find(q) {
            Some(end) => (format!("{q}{new}{q}"), &v[end + 2..]),
            None => (new.to_owned(), ""),
        },
        _ => match v.find(" #") {
            Some(c) => {
                let val = v[..c].trim_end();
                (new.to_owned(), &v[val.len()..])
            }
            None => (new.to_owned(), &v[v.trim_end().len()..]),
        },
    };
    format!("{head}{lead}{quoted}{rest}{ending}")
}

/// The edit setting IG `id`'s `packageUrl` and `version`: the replaced lines (index,
/// original line with its ending) and the new text, None when nothing changes.
pub type Replaced = Vec<(usize, String)>;

pub fn plan(
    text: &str,
    id: &str,
    url: &str,
    version: &str,
) -> Result<(Replaced, Option<String>), String> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let (u, v) = locate(&refs, id)?;
    let mut replaced = vec![];
    for (i, new) in [(u, url), (v, version)] {
        let line = replace_value(&lines[i], new);
        if line != lines[i] {
            replaced.push((i, std::mem::replace(&mut lines[i], line)));
        }
    }
    let changed = !replaced.is_empty();
    Ok((replaced, changed.then(|| lines.concat())))
}

/// Puts the replaced lines back; the rest of the file is untouched.
pub fn revert(text: &str, replaced: &Replaced) -> String {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    for (i, orig) in replaced {
        if let Some(l) = lines.get_mut(*i) {
            *l = orig.clone();
        }
    }
    lines.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "spring:\n  datasource:\n    url: jdbc:x # keep\nhapi:\n  fhir:\n    implementationguides:\n      other:\n        packageUrl: classpath:packages/x.fhir-1.0.0.tgz\n        name: x.fhir\n        version: 1.0.0\n      bd_core:\r\n        # the national IG\n        packageUrl: \"classpath:packages/bd.gov.dghs.core-0.2.1.tgz\"  # pinned\r\n        name: bd.gov.dghs.core\n        version: 0.2.1\n        installMode: STORE_AND_INSTALL\n    cors: true\n";

    #[test]
    fn edits_only_the_two_values_and_reverts() {
        let id = "bd.gov.dghs.core";
        let (r, new) = plan(
            YAML,
            id,
            "classpath:packages/bd.gov.dghs.core-0.3.0.tgz",
            "0.3.0",
        )
        .unwrap();
        let new = new.unwrap();
        assert_eq!(r.len(), 2);
        let expect = YAML
            .replace("core-0.2.1.tgz\"  # pinned", "core-0.3.0.tgz\"  # pinned")
            .replace("version: 0.2.1", "version: 0.3.0");
        assert_eq!(new, expect);
        assert_eq!(
            values(&new, id).unwrap(),
            (
                "classpath:packages/bd.gov.dghs.core-0.3.0.tgz".into(),
                "0.3.0".into()
            )
        );
        assert_eq!(values(&new, "x.fhir").unwrap().1, "1.0.0");
        assert_eq!(revert(&new, &r), YAML);
        // Already set: nothing to do.
        let (r2, n2) = plan(
            &new,
            id,
            "classpath:packages/bd.gov.dghs.core-0.3.0.tgz",
            "0.3.0",
        )
        .unwrap();
        assert!(r2.is_empty() && n2.is_none());
    }

    #[test]
    fn list_items_and_missing_entries() {
        let y = "hapi:\n  fhir:\n    implementationguides:\n      - packageUrl: classpath:packages/bd.gov.dghs.core-0.2.1.tgz\n        version: '0.2.1'\n";
        let (_, n) = plan(
            y,
            "bd.gov.dghs.core",
            "classpath:packages/bd.gov.dghs.core-0.2.2.tgz",
            "0.2.2",
        )
        .unwrap();
        assert_eq!(
            n.unwrap(),
            "hapi:\n  fhir:\n    implementationguides:\n      - packageUrl: classpath:packages/bd.gov.dghs.core-0.2.2.tgz\n        version: '0.2.2'\n"
        );
        assert!(
            values(y, "other.ig")
                .unwrap_err()
                .contains("no entry for other.ig")
        );
        assert!(
            values("hapi:\n  fhir: {}\n", "x")
                .unwrap_err()
                .contains("no `hapi.fhir.implementationguides`")
        );
    }
}
