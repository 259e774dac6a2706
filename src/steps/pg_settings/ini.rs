//! pgbouncer.ini edits: one `key = value` line of one section read, set or removed, every
//! other byte kept. pgBouncer reads keys case-insensitively and the last occurrence wins,
//! so a set rewrites every occurrence of the key in the section (and appends one when
//! there is none), and a read returns the last. The file is replaced atomically with its
//! mode and owner kept: pgBouncer runs as a service user that must still read it.

use std::path::Path;

use anyhow::Context;

fn section_of(line: &str) -> Option<String> {
    let l = line.trim();
    l.strip_prefix('[')?
        .strip_suffix(']')
        .map(|s| s.trim().to_ascii_lowercase())
}

fn key_value(line: &str) -> Option<(String, &str)> {
    let l = line.trim_start();
    if l.starts_with(';') || l.starts_with('#') {
        return None;
    }
    let (k, v) = l.split_once('=')?;
    Some((k.trim().to_ascii_lowercase(), v.trim()))
}

/// The value of `key` in `[section]` (the last occurrence), if set.
pub fn get(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = None;
    let mut found = None;
    for line in text.lines() {
        if let Some(s) = section_of(line) {
            current = Some(s);
        } else if current.as_deref() == Some(section)
            && let Some((k, v)) = key_value(line)
            && k == key
        {
            found = Some(v.to_owned());
        }
    }
    found
}

/// `text` with `key = value` in `[section]` (`None`: every `key` line removed). Refuses a
/// file without the section: the edit would not be what pgBouncer reads.
pub fn set(text: &str, section: &str, key: &str, value: Option<&str>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut current: Option<String> = None;
    let mut seen_section = false;
    let mut written = false;
    // Where the section's last non-blank line ended: a new key goes right after it.
    let mut insert_at = None;
    for line in text.split_inclusive('\n') {
        if let Some(s) = section_of(line) {
            current = Some(s.clone());
            if s == section {
                seen_section = true;
                insert_at = Some(out.len() + line.len());
            }
            out.push_str(line);
            continue;
        }
        if current.as_deref() == Some(section) {
            if let Some((k, _)) = key_value(line)
                && k == key
            {
                if let Some(v) = value {
                    let ending = &line[line.trim_end_matches(['\n', '\r']).len()..];
                    out.push_str(&format!("{key} = {v}{ending}"));
                    written = true;
                    insert_at = Some(out.len());
                }
                continue;
            }
            if !line.trim().is_empty() {
                insert_at = Some(out.len() + line.len());
            }
        }
        out.push_str(line);
    }
    if !seen_section {
        anyhow::bail!("it has no [{section}] section");
    }
    if let (Some(v), false, Some(at)) = (value, written, insert_at) {
        let mut new = format!("{key} = {v}\n");
        if at > 0 && !out[..at].ends_with('\n') {
            new.insert(0, '\n');
        }
        out.insert_str(at, &new);
    }
    Ok(out)
}

/// Reads the file, applies [`set`], and replaces it (temp + fsync + rename) keeping its
/// mode and owner. No write when nothing changes.
pub fn set_file(path: &Path, section: &str, key: &str, value: Option<&str>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let new = set(&text, section, key, value).with_context(|| path.display().to_string())?;
    if new == text {
        return Ok(());
    }
    let meta = std::fs::metadata(path)?;
    crate::infra::dotenv::write_atomic(path, new.as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("keep the owner of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "[databases]\nfhirdb = host=db dbname=fhirdb\n\n[pgbouncer]\nlisten_port = 6432\n; default_pool_size = 5\nDefault_Pool_Size = 20\nmax_client_conn = 200\n\n[users]\n";

    #[test]
    fn a_key_is_replaced_in_its_section_only_and_read_back() {
        let t = set(INI, "pgbouncer", "default_pool_size", Some("30")).unwrap();
        assert_eq!(
            t,
            INI.replace("Default_Pool_Size = 20", "default_pool_size = 30")
        );
        assert_eq!(
            get(&t, "pgbouncer", "default_pool_size").as_deref(),
            Some("30")
        );
        assert_eq!(get(&t, "databases", "default_pool_size"), None);
    }

    #[test]
    fn a_missing_key_goes_after_the_section_s_last_line_and_removal_restores_it() {
        let base = INI.replace("Default_Pool_Size = 20\n", "");
        let t = set(&base, "pgbouncer", "default_pool_size", Some("30")).unwrap();
        assert!(
            t.contains("max_client_conn = 200\ndefault_pool_size = 30\n\n[users]"),
            "{t}"
        );
        assert_eq!(
            set(&t, "pgbouncer", "default_pool_size", None).unwrap(),
            base
        );
        let last = set(
            "[pgbouncer]\nx = 1",
            "pgbouncer",
            "default_pool_size",
            Some("3"),
        )
        .unwrap();
        assert_eq!(last, "[pgbouncer]\nx = 1\ndefault_pool_size = 3\n");
    }

    #[test]
    fn a_file_without_the_section_is_refused() {
        let e = set("[databases]\n", "pgbouncer", "default_pool_size", Some("3")).unwrap_err();
        assert_eq!(e.to_string(), "it has no [pgbouncer] section");
    }
}
