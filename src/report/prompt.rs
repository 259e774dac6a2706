//! Asking a person (approval steps): the `Prompter` the engine hands to steps, and the
//! terminal's implementation (a question on stderr, a line from stdin).
#![allow(clippy::print_stderr)] // the question is asked on the terminal

use std::io::{BufRead, IsTerminal, Write};

/// Asks a person a yes/no question (approval steps). None: nobody can be asked.
pub trait Prompter: Send + Sync {
    /// Whether there is a person at a terminal to ask.
    fn interactive(&self) -> bool;
    fn confirm(&self, question: &str) -> Option<bool>;
}

pub struct TermPrompter;

impl Prompter for TermPrompter {
    fn interactive(&self) -> bool {
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    }

    fn confirm(&self, question: &str) -> Option<bool> {
        if !self.interactive() {
            return None;
        }
        super::human::suspend(|| {
            eprint!("{question} [y/N] ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).ok()?;
            Some(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
        })
    }
}
