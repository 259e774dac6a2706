//! Docker's image reference grammar (distribution's `reference` package), so that a tag
//! Docker would refuse is a validation error, not a failed `apply`:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*     (255 characters at most)
//! domain     := host [ ":" port ]        (the first part, when it has a `.` or a `:`,
//!                                         is `localhost`, or has an upper-case letter)
//! host       := label ( "." label )*  |  "[" IPv6 "]";   label := [a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?
//! component  := [a-z0-9]+ ( separator [a-z0-9]+ )*;      separator := "." | "_" | "__" | "-"+
//! tag        := [\w][\w.-]{0,127}
//! digest     := algorithm ":" hex;   sha256 → 64 lower-case hex digits
//! ```
//!
//! A validation placeholder (`<name>`: a variable or target value not given yet) stands in
//! for any valid text where it appears; the value it gets is checked when it is known.

/// What a reference may carry besides a name and a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// `docker build -t` and `push` take `name[:tag]` only.
    Refused,
    Allowed,
}

/// Ok, or why Docker would refuse `reference`.
pub fn check(reference: &str, digest: Digest) -> Result<(), String> {
    let s = without_placeholders(reference);
    let bad = |why: String| {
        Err(format!(
            "`{reference}` is not a valid image reference: {why}"
        ))
    };
    if s.is_empty() {
        return bad("it is empty".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return bad(format!("it contains {}", describe_char(c)));
    }
    let (rest, dig) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s.as_str(), None),
    };
    if let Some(d) = dig {
        if digest == Digest::Refused {
            return bad("a digest (`@…`) cannot be given here: name a tag".into());
        }
        if let Err(why) = check_digest(d) {
            return bad(why);
        }
    }
    // The tag is after the last `:` that is not followed by a `/` (else it is a port).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (rest, None),
    };
    if let Some(t) = tag
        && let Err(why) = check_tag(t)
    {
        return bad(why);
    }
    if name.len() > 255 {
        return bad(format!(
            "the name is {} characters long (at most 255)",
            name.len()
        ));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        let is_domain = first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase());
        if is_domain {
            if let Err(why) = check_domain(first) {
                return bad(why);
            }
            parts.remove(0);
        }
    }
    for p in parts {
        if let Err(why) = check_component(p) {
            return bad(why);
        }
    }
    Ok(())
}

/// Each `<name>` placeholder becomes `x`: valid as a host, a name component and a tag.
fn without_placeholders(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        let after = &rest[i..];
        match after[1..].find(['<', '>', ' ']).map(|j| j + 1) {
            Some(j) if after.as_bytes()[j] == b'>' && super::is_placeholder(&after[..=j]) => {
                out.push_str(&rest[..i]);
                out.push('x');
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str(&rest[..=i]);
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn describe_char(c: char) -> String {
    match c {
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        ' ' => "a space".into(),
        c if c.is_control() => format!("a control character (U+{:04X})", c as u32),
        c => format!("whitespace (U+{:04X})", c as u32),
    }
}

fn check_tag(t: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let Some(first) = t.chars().next() else {
        return Err("the tag after `:` is empty".into());
    };
    if !word(first) {
        return Err(format!(
            "the tag `{t}` must start with a letter, digit or `_`"
        ));
    }
    if let Some(c) = t.chars().find(|&c| !(word(c) || c == '.' || c == '-')) {
        return Err(format!(
            "the tag `{t}` may only hold letters, digits, `_`, `.` and `-`, not `{c}`"
        ));
    }
    if t.len() > 128 {
        return Err(format!(
            "the tag is {} characters long (at most 128)",
            t.len()
        ));
    }
    Ok(())
}

fn check_component(p: &str) -> Result<(), String> {
    let why = |w: &str| Err(format!("the name component `{p}` {w}"));
    if p.is_empty() {
        return Err("the name has an empty component (`//`, or a leading or trailing `/`)".into());
    }
    if p.chars().any(|c| c.is_ascii_uppercase()) {
        return why("must be lower-case");
    }
    if let Some(c) = p
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)))
    {
        return why(&format!(
            "may only hold a-z, 0-9 and the separators `.`, `_`, `__`, `-`, not `{c}`"
        ));
    }
    // Runs of separators: `.`, `_`, `__` or one or more `-`, between alphanumerics.
    let b = p.as_bytes();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    if sep(b[0]) || sep(b[b.len() - 1]) {
        return why("must start and end with a letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if sep(b[i]) {
            let j = (i..b.len()).find(|&j| !sep(b[j])).unwrap_or(b.len());
            let run = &p[i..j];
            let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|c| c == b'-');
            if !ok {
                return why(&format!(
                    "has the separator `{run}` (only `.`, `_`, `__` or dashes)"
                ));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(format!("the registry `{d}` has an unclosed `[`"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("the registry `{d}` is not an IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            a => match a.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return Err(format!("the registry `{d}` has text after `]`")),
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("the registry `{d}` has a bad port `{p}`"));
    }
    if d.starts_with('[') {
        return Ok(());
    }
    for label in host.split('.') {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_alphanumeric();
        let ok = !b.is_empty()
            && alnum(&b[0])
            && alnum(&b[b.len() - 1])
            && b.iter().all(|c| alnum(c) || *c == b'-');
        if !ok {
            return Err(format!(
                "the registry host `{host}` is not a host name (labels of letters, digits and inner `-`)"
            ));
        }
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("the digest `{d}` must be `algorithm:hex`"));
    };
    if alg == "sha256" {
        if hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Ok(());
        }
        return Err(format!(
            "the digest `{d}` must have 64 lower-case hex digits after `sha256:`"
        ));
    }
    let alg_ok = !alg.is_empty()
        && alg.split(['+', '.', '_', '-']).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if alg_ok && hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Ok(());
    }
    Err(format!("the digest `{d}` is not `algorithm:hex`"))
}

/// Ok, or why a build arg or label value would be mangled on its way into the image: a
/// control character (a newline would end up silently inside a label).
pub fn check_text(what: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{what} contains {}: Docker would carry it into the image unseen; remove it",
            describe_char(c)
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(r: &str) {
        assert_eq!(check(r, Digest::Allowed), Ok(()), "{r}");
    }
    fn refused(r: &str, why: &str) {
        match check(r, Digest::Allowed) {
            Ok(()) => panic!("{r} was accepted"),
            Err(e) => assert!(e.contains(why), "{r}: {e}"),
        }
    }

    #[test]
    fn references_docker_accepts() {
        for r in [
            "hapi",
            "hapi:1.1.0",
            "library/hapi:latest",
            "bd-fhir-hapi:0.2.2",
            "a__b/c_d.e---f:T_1.x-Y",
            "127.0.0.1:5000/bd-fhir-hapi:1.1.0",
            "localhost/hapi",
            "localhost:5000/a/b/c",
            "Registry.Example.COM:443/hapi:1",
            "registry.staging.example:5000/bd-fhir-hapi:1.1.0",
            "[::1]:5000/hapi:1",
            "hapi@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "r.example/hapi:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            ok(r);
        }
        ok(&format!("hapi:{}", "t".repeat(128)));
        ok("hapi:_x");
    }

    #[test]
    fn references_docker_refuses() {
        refused("Hapi:1", "must be lower-case");
        refused(
            "bd/Hapi:1",
            "`bd/Hapi:1` is not a valid image reference: the name component `Hapi` must be lower-case",
        );
        refused(
            &format!("hapi:{}", "t".repeat(129)),
            "the tag is 129 characters long (at most 128)",
        );
        refused("hapi:.1", "must start with a letter, digit or `_`");
        refused("hapi:1+2", "not `+`");
        refused("hapi:", "the tag after `:` is empty");
        refused("ha$pi", "not `$`");
        refused("ha...pi", "the separator `...`");
        refused("ha._pi", "the separator `._`");
        refused("ha___pi", "the separator `___`");
        refused("-hapi", "must start and end with a letter or digit");
        refused("hapi-", "must start and end");
        refused("reg//hapi", "empty component");
        refused("hapi/", "empty component");
        refused("my_reg.example:50x0/hapi", "bad port");
        refused("-reg.example/hapi", "is not a host name");
        refused("hapi 1", "a space");
        refused("hapi\n:1", "a newline");
        refused(
            "hapi@sha256:abc",
            "64 lower-case hex digits after `sha256:`",
        );
        refused("", "empty");
        refused(&format!("{}:1", "a".repeat(256)), "at most 255");
        assert!(
            check(
                "hapi@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                Digest::Refused
            )
            .unwrap_err()
            .contains("name a tag")
        );
    }

    #[test]
    fn placeholders_stand_for_valid_text() {
        ok("<target.registry.url>/bd-fhir-hapi:<build_version>");
        ok("<image>");
        ok("<target.registry.url>/<image_repo>:1.1.0-<git.commit>");
        refused(
            "<target.registry.url>/Bd-Fhir:<v>",
            "`Bd-Fhir` must be lower-case",
        );
        refused("a<b/c", "not `<`");
    }

    #[test]
    fn control_characters_in_text_are_refused() {
        assert!(check_text("build arg `V`", "1.1.0").is_ok());
        let e = check_text("build arg `V`", "1.1.0\nevil=1").unwrap_err();
        assert!(e.starts_with("build arg `V` contains a newline"), "{e}");
        assert!(check_text("x", "a\u{7f}").unwrap_err().contains("U+007F"));
        assert!(check_text("x", "tab\there").unwrap_err().contains("a tab"));
    }
}
