//! Leaf helpers shared by every layer: durations, "did you mean", the validation
//! placeholder, and the span-keeping TOML parser with its located errors (playbooks and
//! target files both use them). Nothing in here imports the rest of the crate.

pub mod diagnostic;
pub mod duration;
pub mod image_ref;
pub mod parse;
pub mod suggest;

/// `<name>`: what a variable renders as while validating without its value (a required
/// variable not given yet); typed parameters accept it there and check it at run time.
pub fn is_placeholder(s: &str) -> bool {
    s.len() > 2
        && s.starts_with('<')
        && s.ends_with('>')
        && !s[1..s.len() - 1].contains(['<', '>', ' '])
}
