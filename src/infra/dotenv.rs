//! Edits `KEY=VALUE` lines of a dotenv file in place, keeping every other byte as it was, and
//! reverts such an edit byte for byte. Writes go through a temp file, fsync and rename.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What an edit replaced, enough to undo it without storing the rest of the file (which may
/// hold secrets that must never reach the journal).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Edit {
    /// (line index, original line without its line ending) for each replaced line.
    pub replaced: Vec<(usize, String)>,
    /// Keys appended at the end, in order.
    pub appended: Vec<String>,
    /// Whether the original file ended with a newline (appending may have added one).
    pub had_final_newline: bool,
    pub original_len: usize,
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
        appended: vec![],
        had_final_newline: text.is_empty() || text.ends_with('\n'),
        original_len: lines.len(),
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, line) in lines.iter_mut().enumerate() {
        let (body, ending) = split_ending(line);
        let Some(k) = key_of(body) else { continue };
        if let Some(v) = vars.get(k) {
            seen.insert(k.to_owned());
            let new = format!("{k}={}", quote(v));
            if body != new {
                edit.replaced.push((i, body.to_owned()));
                *line = format!("{new}{ending}");
            }
        }
    }
    for (k, v) in vars {
        if !seen.contains(k) {
            if let Some(last) = lines.last_mut()
                && !last.ends_with('\n')
            {
                last.push('\n');
            }
            lines.push(format!("{k}={}\n", quote(v)));
            edit.appended.push(k.clone());
        }
    }
    let changed = !edit.replaced.is_empty() || !edit.appended.is_empty();
    (edit, changed.then(|| lines.concat()))
}

/// Undoes `edit`: puts replaced lines back, drops appended ones, restores the final newline.
pub fn revert(path: &Path, edit: &Edit) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    for (i, orig) in &edit.replaced {
        if let Some(line) = lines.get_mut(*i) {
            let (_, ending) = split_ending(line);
            *line = format!("{orig}{ending}");
        }
    }
    for k in &edit.appended {
        if let Some(pos) = lines
            .iter()
            .rposition(|l| key_of(split_ending(l).0) == Some(k.as_str()))
        {
            lines.remove(pos);
        }
    }
    if !edit.had_final_newline
        && lines.len() == edit.original_len
        && let Some(last) = lines.last_mut()
        && last.ends_with('\n')
    {
        last.pop();
    }
    let new = lines.concat();
    if new != text {
        write_atomic(path, new.as_bytes())?;
    }
    Ok(())
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
