mod ig;

/// Temporary dispatch for `ferry ig inspect|diff` until cli.rs/app.rs wire it; only the
/// argument shapes of the final CLI are accepted. Exit 2 = bad input.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut limits = ig::Limits::default();
    let mut json = false;
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--format" => json = it.next().map(String::as_str) == Some("json"),
            "--max-bytes" => match it.next().and_then(|n| n.parse().ok()) {
                Some(n) => limits.max_bytes = n,
                None => std::process::exit(2),
            },
            _ => pos.push(std::path::PathBuf::from(a)),
        }
    }
    let out = &mut std::io::stdout();
    let res = match pos
        .iter()
        .map(|p| p.to_str().unwrap_or(""))
        .collect::<Vec<_>>()[..]
    {
        ["ig", "inspect", _] => ig::inspect_cmd(&pos[2], &limits, json, out),
        ["ig", "diff", _, _] => ig::diff_cmd(&pos[2], &pos[3], &limits, json, out),
        _ => {
            eprintln!(
                "usage: ferry ig inspect PKG | ferry ig diff OLD NEW [--max-bytes N] [--format json]"
            );
            std::process::exit(2)
        }
    };
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
