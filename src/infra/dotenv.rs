//! Edits `KEY=VALUE` lines of a dotenv file in place, keeping every other byte as it was, and
//! reverts such an edit byte for byte. Writes go through a temp file, fsync and rename.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What an edit replaced, enough to undo it without storing the rest of the file (which may
/// hold secrets that must never reach the journal).
///
/// The undo goes by key and content, not by line number: the line the edit wrote is found
/// again by its key (the same occurrence of it, counted from the top), checked to still
/// read what the edit wrote, and replaced by the old line wherever it is now. So a comment
/// or a line added above it since does not misplace the restore, and a line someone edited
/// since is refused (naming the key, the line and the file), never overwritten.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Edit {
    /// (line index when edited, original line without its line ending) per replaced line.
    pub replaced: Vec<(usize, String)>,
    /// What was written in place of each replaced line, in the same order. Empty in the
    /// journals of older versions: their undo goes by key and occurrence, unchecked.
    #[serde(default)]
    pub written: Vec<Written>,
    /// Keys appended at the end, in order.
    pub appended: Vec<String>,
    /// The appended lines as written (same order; empty in older journals).
    #[serde(default)]
    pub appended_lines: Vec<String>,
    /// Whether the original file ended with a newline (appending may have added one).
    pub had_final_newline: bool,
    pub original_len: usize,
}

/// A line an edit wrote in place of another.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Written {
    pub key: String,
    /// Which line holding `key` it is (0-based, from the top) …
    pub nth: usize,
    /// … of how many lines holding `key` (duplicates are all set, as compose reads the last).
    pub of: usize,
    /// The line as written, without its line ending.
    pub line: String,
}

/// The line `set` writes for `key` = `value`.
pub fn line_for(key: &str, value: &str) -> String {
    format!("{key}={}", quote(value))
}

pub fn key_of(line: &str) -> Option<&str> {
    let l = line.trim_start();
    let l = l.strip_prefix("export ").map_or(l, str::trim_start);
    if l.starts_with('#') {
        return None;
    }
    let eq = l.find('=')?;
    let k = l[..eq].trim_end();
    (!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(k)
}

fn value_of(line: &str) -> Option<String> {
    let v = line[line.find('=')? + 1..].trim();
    let unq = if v.len() >= 2
        && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''))
    {
        v[1..v.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\")
    } else {
        v.to_owned()
    };
    Some(unq)
}

pub fn quote(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:@,+-=".contains(c))
    {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Parses the file into its last value per key (as docker-compose reads it).
pub fn read(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| Some((key_of(l)?.to_owned(), value_of(l)?)))
        .collect())
}

/// Sets every key (all occurrences), appending missing ones; returns what it replaced.
pub fn set(path: &Path, vars: &BTreeMap<String, String>) -> std::io::Result<Edit> {
    let text = std::fs::read_to_string(path)?;
    let (edit, new) = plan_set(&text, vars);
    if let Some(new) = new {
        write_atomic(path, new.as_bytes())?;
    }
    Ok(edit)
}

/// What `set` would do to `text`, without writing: the edit and the new text (None when
/// nothing changes). Lets a step journal the edit before it touches the file.
pub fn plan_set(text: &str, vars: &BTreeMap<String, String>) -> (Edit, Option<String>) {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    let mut edit = Edit {
        replaced: vec![],
        written: vec![],
        appended: vec![],
        appended_lines: vec![],
        had_final_newline: text.is_empty() || text.ends_with('\n'),
        original_len: lines.len(),
    };
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        if let Some(k) = key_of(split_ending(l).0) {
            *total.entry(k.to_owned()).or_default() += 1;
        }
    }
    let mut nth: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in lines.iter_mut().enumerate() {
        let (body, ending) = split_ending(line);
        let Some(k) = key_of(body) else { continue };
        let n = nth.entry(k.to_owned()).or_default();
        let this = *n;
        *n += 1;
        if let Some(v) = vars.get(k) {
            let new = line_for(k, v);
            if body != new {
                edit.replaced.push((i, body.to_owned()));
                edit.written.push(Written {
                    key: k.to_owned(),
                    nth: this,
                    of: total[k],
                    line: new.clone(),
                });
                *line = format!("{new}{ending}");
            }
        }
    }
    for (k, v) in vars {
        if !total.contains_key(k) {
            if let Some(last) = lines.last_mut()
                && !last.ends_with('\n')
            {
                last.push('\n');
            }
            let new = line_for(k, v);
            lines.push(format!("{new}\n"));
            edit.appended.push(k.clone());
            edit.appended_lines.push(new);
        }
    }
    let changed = !edit.replaced.is_empty() || !edit.appended.is_empty();
    (edit, changed.then(|| lines.concat()))
}

/// Undoes `edit` by key and content (see [`Edit`]): each line it wrote goes back to the old
/// line where it is now, appended lines are dropped, the final newline it added is taken
/// off. Lines already restored are left (a re-entered undo is a no-op). Refused, changing
/// nothing, when a line it wrote was edited since or its key now has more or fewer lines.
pub fn revert(path: &Path, edit: &Edit) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    match plan_revert(&text, edit) {
        Ok(new) if new != text => write_atomic(path, new.as_bytes()),
        Ok(_) => Ok(()),
        Err(why) => Err(std::io::Error::other(format!("{}: {why}", path.display()))),
    }
}

/// What `revert` would make of `text`, or why it refuses (no values in the message: they
/// may be secrets).
pub fn plan_revert(text: &str, edit: &Edit) -> Result<String, String> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    let holding = |lines: &[String], key: &str| -> Vec<usize> {
        (0..lines.len())
            .filter(|&i| key_of(split_ending(&lines[i]).0) == Some(key))
            .collect()
    };
    let mut rank: BTreeMap<String, usize> = BTreeMap::new();
    for (j, (_, orig)) in edit.replaced.iter().enumerate() {
        // Older journals: the key from the old line, the occurrence among the replaced ones.
        let legacy;
        let w = match edit.written.get(j) {
            Some(w) => w,
            None => {
                let key = key_of(orig).unwrap_or_default().to_owned();
                let r = rank.entry(key.clone()).or_default();
                legacy = Written {
                    key,
                    nth: *r,
                    of: 0,
                    line: String::new(),
                };
                *r += 1;
                &legacy
            }
        };
        let checked = !edit.written.is_empty();
        let at = holding(&lines, &w.key);
        if checked && at.len() != w.of {
            return Err(format!(
                "`{}` is on {} line(s) now, {} when ferry set it: refusing to guess which line to restore; fix the file by hand, then roll back again",
                w.key,
                at.len(),
                w.of
            ));
        }
        let Some(&pos) = at.get(w.nth) else {
            return Err(format!(
                "the line ferry wrote for `{}` is gone: refusing to restore it; put the old line back by hand, then roll back again",
                w.key
            ));
        };
        let (body, ending) = split_ending(&lines[pos]);
        if body == orig {
            continue; // already restored
        }
        if checked && body != w.line {
            return Err(format!(
                "line {} (`{}`) was edited since ferry wrote it: refusing to overwrite that edit; restore the old line by hand (or undo the edit), then roll back again",
                pos + 1,
                w.key
            ));
        }
        let ending = ending.to_owned();
        lines[pos] = format!("{orig}{ending}");
    }
    let mut removed = false;
    let mut all_at_end = true;
    for (j, k) in edit.appended.iter().enumerate().rev() {
        let Some(&pos) = holding(&lines, k).last() else {
            continue; // already removed
        };
        if let Some(l) = edit.appended_lines.get(j)
            && split_ending(&lines[pos]).0 != l
        {
            return Err(format!(
                "line {} (`{k}`, appended by ferry) was edited since ferry wrote it: refusing to remove it; remove or restore it by hand, then roll back again",
                pos + 1
            ));
        }
        all_at_end &= pos + 1 == lines.len();
        lines.remove(pos);
        removed = true;
    }
    if removed
        && all_at_end
        && !edit.had_final_newline
        && let Some(last) = lines.last_mut()
        && last.ends_with('\n')
    {
        last.pop();
    }
    Ok(lines.concat())
}

fn split_ending(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\n', '\r']);
    (body, &line[body.len()..])
}

/// Temp file in the same directory, fsync, rename, fsync the directory; keeps the mode of
/// the file it replaces (a new file stays 0600). The temp file is created 0600 with
/// O_EXCL under a random name, so it never follows a planted symlink and is never readable
/// by others while the (possibly secret) bytes are written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let perms = std::fs::metadata(path).map(|m| m.permissions()).ok();
    let (mut f, tmp) = create_temp(dir, name)?;
    let written = (|| {
        f.write_all(bytes)?;
        if let Some(p) = perms {
            f.set_permissions(p)?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// `.<name>.ferry-tmp-<random>` in `dir`: created new (O_EXCL, O_NOFOLLOW), 0600.
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for _ in 0..16 {
        let mut rnd = [0u8; 8];
        getrandom(&mut rnd)?;
        let tmp = dir.join(format!(".{name}.ferry-tmp-{}", hex::encode(rnd)));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temp file name")))
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: buf is valid for buf.len() bytes; getrandom(2) writes at most that many.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_revert_are_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        let orig = "# comment\r\nHAPI_IMAGE=old:1\nexport OTHER = \"x y\"\nHAPI_IG_VERSION=0.2.1";
        std::fs::write(&p, orig).unwrap();
        let vars = BTreeMap::from([
            ("HAPI_IMAGE".to_owned(), "reg/hapi:2".to_owned()),
            ("HAPI_IG_VERSION".to_owned(), "0.3.0".to_owned()),
            ("NEW_KEY".to_owned(), "a b".to_owned()),
        ]);
        let edit = set(&p, &vars).unwrap();
        let after = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            after,
            "# comment\r\nHAPI_IMAGE=reg/hapi:2\nexport OTHER = \"x y\"\nHAPI_IG_VERSION=0.3.0\nNEW_KEY=\"a b\"\n"
        );
        assert_eq!(read(&p).unwrap()["OTHER"], "x y");
        assert_eq!(read(&p).unwrap()["NEW_KEY"], "a b");
        revert(&p, &edit).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), orig);
        // Setting values that are already there changes nothing.
        std::fs::write(&p, "A=1\n").unwrap();
        let e = set(&p, &BTreeMap::from([("A".to_owned(), "1".to_owned())])).unwrap();
        assert!(e.replaced.is_empty() && e.appended.is_empty());
    }

    fn vars(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const ENV: &str = "COMPOSE_PROJECT_NAME=bd-fhir-national\nHAPI_IMAGE=reg/hapi:1.0.0\nHAPI_IG_VERSION=0.2.1\nHAPI_IG_PACKAGE=bd.gov.dghs.core-0.2.1.tgz\n";

    fn upgrade() -> (Edit, String) {
        let (edit, new) = plan_set(
            ENV,
            &vars(&[
                ("HAPI_IG_VERSION", "0.2.2"),
                ("HAPI_IG_PACKAGE", "bd.gov.dghs.core-0.2.2.tgz"),
                ("HAPI_NEW_FLAG", "on"),
            ]),
        );
        (edit, new.unwrap())
    }

    #[test]
    fn a_comment_inserted_above_does_not_misplace_the_restore() {
        // The issue's case: a comment near the top after the upgrade, then the rollback.
        // By position, COMPOSE_PROJECT_NAME was overwritten and HAPI_IG_VERSION doubled.
        let (edit, after) = upgrade();
        let edited = format!("# upgraded to IG 0.2.2 by the release team\n{after}");
        let back = plan_revert(&edited, &edit).unwrap();
        assert_eq!(
            back,
            format!("# upgraded to IG 0.2.2 by the release team\n{ENV}")
        );
        assert_eq!(back.matches("HAPI_IG_VERSION").count(), 1);
        assert!(back.contains("COMPOSE_PROJECT_NAME=bd-fhir-national\n"));
        // Reverting again changes nothing (a re-entered rollback).
        assert_eq!(plan_revert(&back, &edit).unwrap(), back);
    }

    #[test]
    fn a_moved_line_is_restored_where_it_is_now() {
        let (edit, after) = upgrade();
        // Someone moved HAPI_IG_VERSION to the end (above the appended line) and added one.
        let mut lines: Vec<&str> = after.lines().collect();
        let v = lines.remove(2);
        lines.insert(3, v);
        lines.insert(0, "EXTRA=1");
        let moved = lines.join("\n") + "\n";
        assert_eq!(
            plan_revert(&moved, &edit).unwrap(),
            "EXTRA=1\nCOMPOSE_PROJECT_NAME=bd-fhir-national\nHAPI_IMAGE=reg/hapi:1.0.0\nHAPI_IG_PACKAGE=bd.gov.dghs.core-0.2.1.tgz\nHAPI_IG_VERSION=0.2.1\n"
        );
    }

    #[test]
    fn a_line_edited_since_is_refused_naming_key_and_line() {
        let (edit, after) = upgrade();
        let edited = format!(
            "# note\n{}",
            after.replace("HAPI_IG_VERSION=0.2.2", "HAPI_IG_VERSION=0.2.3")
        );
        let e = plan_revert(&edited, &edit).unwrap_err();
        assert!(
            e.starts_with("line 4 (`HAPI_IG_VERSION`) was edited since ferry wrote it"),
            "{e}"
        );
        assert!(!e.contains("0.2."), "no values in the message: {e}");
        // Through the file: the error names it, and the file is left as it was.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, &edited).unwrap();
        let e = revert(&p, &edit).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: line 4", p.display())), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), edited);
        // An appended line edited since is refused too.
        let e = plan_revert(
            &after.replace("HAPI_NEW_FLAG=on", "HAPI_NEW_FLAG=off"),
            &edit,
        )
        .unwrap_err();
        assert!(
            e.contains("line 5 (`HAPI_NEW_FLAG`, appended by ferry) was edited"),
            "{e}"
        );
        // A second line with the key: which one is ours cannot be told.
        let e = plan_revert(&format!("HAPI_IG_VERSION=9\n{after}"), &edit).unwrap_err();
        assert!(
            e.contains("`HAPI_IG_VERSION` is on 2 line(s) now, 1 when"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_and_a_missing_final_newline_round_trip() {
        let orig = "A=1\nB=2\nA=3";
        let (edit, new) = plan_set(orig, &vars(&[("A", "9"), ("C", "x")]));
        let new = new.unwrap();
        assert_eq!(new, "A=9\nB=2\nA=9\nC=x\n");
        assert_eq!(plan_revert(&new, &edit).unwrap(), orig);
        assert_eq!(
            plan_revert(&format!("# top\n{new}"), &edit).unwrap(),
            format!("# top\n{orig}")
        );
    }

    #[test]
    fn an_edit_journaled_by_an_older_version_still_reverts() {
        let (mut edit, after) = upgrade();
        edit.written.clear();
        edit.appended_lines.clear();
        assert_eq!(plan_revert(&after, &edit).unwrap(), ENV);
        let old: Edit = serde_json::from_str(
            r#"{"replaced":[[2,"HAPI_IG_VERSION=0.2.1"]],"appended":[],"had_final_newline":true,"original_len":4}"#,
        )
        .unwrap();
        assert!(old.written.is_empty());
    }

    #[test]
    fn temp_files_are_private_new_and_random() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (_, a) = create_temp(dir.path(), ".env").unwrap();
        let (_, b) = create_temp(dir.path(), ".env").unwrap();
        assert_ne!(a, b, "a random name each time");
        assert_eq!(mode(&a), 0o600);
        assert!(
            a.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("..env.ferry-tmp-")
        );
        // The old fixed name, planted as a symlink, is neither followed nor written.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("..env.ferry-tmp")).unwrap();
        let p = dir.path().join(".env");
        write_atomic(&p, b"SECRET_KEY=x\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(mode(&p), 0o600, "a new file is 0600");
        // An existing file keeps its mode.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"SECRET_KEY=y\n").unwrap();
        assert_eq!(mode(&p), 0o640);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "SECRET_KEY=y\n");
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&b).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| n.contains("ferry-tmp-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
